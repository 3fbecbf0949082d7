"""`instructforge dedup` and `instructforge filter` on real files, without the service."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from app.cli.curate import add_cli
from app.pipeline.rouge import rouge_l

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"real datasets not found at {DATA}")


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="instructforge")
    add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def seeds_and_templated(tmp_path: Path) -> Path:
    """Self-Instruct seeds, T0 prompts wrapping the same questions in two templates, and a retyped copy."""
    records = [
        {
            "instruction": r["instruction"],
            "input": r["instances"][0]["input"],
            "output": r["instances"][0]["output"],
        }
        for r in map(json.loads, (DATA / "self-instruct" / "seed_tasks.jsonl").open(encoding="utf-8"))
    ]
    t0 = DATA / "self-instruct" / "t0_train_50k"
    for name in ("trec_trec1.jsonl", "trec_trec2.jsonl"):
        for line in list((t0 / name).open(encoding="utf-8"))[:60]:
            row = json.loads(line)
            records.append({"instruction": row["prompt"], "input": "", "output": row["completion"]})
    records.append({**records[3], "instruction": "  " + records[3]["instruction"].upper() + " "})
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_dedup_writes_kept_records_and_a_reason_for_every_record(seeds_and_templated, tmp_path, capsys):
    out, report = tmp_path / "out.jsonl", tmp_path / "report.jsonl"
    assert (
        run("dedup", str(seeds_and_templated), "-o", str(out), "--report", str(report), "--threshold", "0.7")
        == 0
    )
    records = read_jsonl(seeds_and_templated)
    rows = read_jsonl(report)
    kept = read_jsonl(out)
    assert [r["index"] for r in rows] == list(range(len(records)))
    assert kept == [records[r["index"]] for r in rows if r["decision"] == "kept"]
    rejected = [r for r in rows if r["decision"] == "rejected"]
    assert {r["reason"] for r in rejected} == {"near_duplicate", "exact_duplicate"}
    for row in rejected:
        assert row["nearest"] < row["index"]
        if row["reason"] == "near_duplicate":
            mine, theirs = records[row["index"]]["instruction"], records[row["nearest"]]["instruction"]
            assert row["score"] == pytest.approx(rouge_l(mine, theirs), abs=1e-6)
            assert row["score"] > 0.7
    assert rows[-1] == {
        "index": len(records) - 1,
        "decision": "rejected",
        "reason": "exact_duplicate",
        "nearest": 3,
        "score": 1.0,
    }
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["kept"] == len(kept)


def test_dedup_on_a_json_array_writes_a_json_array(tmp_path):
    rows = json.loads((DATA / "codealpaca" / "code_alpaca_2k.json").read_text(encoding="utf-8"))[:300]
    src, out = tmp_path / "in.json", tmp_path / "out.json"
    src.write_text(json.dumps(rows + rows[:5]), encoding="utf-8")
    assert run("dedup", str(src), "-o", str(out)) == 0
    kept = json.loads(out.read_text(encoding="utf-8"))
    assert len(kept) <= 300
    assert all(k in rows for k in kept)


def test_filter_rejects_empty_answers_and_ai_disclaimers_of_real_h2o_output(tmp_path, capsys):
    records = []
    for path in sorted((DATA / "h2o-wizardlm").glob("*.json")):
        records += [
            {"instruction": r["input"], "input": "", "output": r["output"]}
            for r in json.loads(path.read_text())
        ]
    src, out, report = tmp_path / "h2o.jsonl", tmp_path / "out.jsonl", tmp_path / "report.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    assert (
        run("filter", str(src), "-o", str(out), "--report", str(report), "--rules", "empty_output,refusal")
        == 0
    )
    rows = read_jsonl(report)
    assert len(rows) == len(records)
    empty = [r for r in rows if r["reason"] == "empty_output"]
    assert len(empty) == sum(not r["output"].strip() for r in records) == 6
    assert any(r["reason"] == "refusal" for r in rows)
    assert len(read_jsonl(out)) == sum(r["decision"] == "kept" for r in rows)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["funnel"]["empty_output"] == 6


def test_filter_refuses_unknown_rules_and_bad_input(tmp_path, capsys):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"instruction": "ok"}\n{not json\n', encoding="utf-8")
    assert run("filter", str(src), "-o", str(tmp_path / "o.jsonl"), "--rules", "no_such_rule") == 2
    assert "unknown rules" in capsys.readouterr().err
    assert run("filter", str(src), "-o", str(tmp_path / "o.jsonl")) == 2
    assert "line 2" in capsys.readouterr().err
