"""`generate rewrite` and `generate reasoning` without the service, on real data and the fake teacher."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.cli import main
from app.pipeline.answers import check_answer


def _write(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text(json.dumps(rows), encoding="utf-8")
    return str(path)


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def test_generate_reasoning_keeps_matching_solutions_and_a_rerun_pays_nothing(
    shared_data: Path, teacher: Any, tmp_path: Path, capsys: Any
) -> None:
    rows = json.loads((shared_data / "alpacadatacleaned" / "gsm_8k_train.json").read_text(encoding="utf-8"))
    src = _write(tmp_path / "gsm.json", rows[:30])
    out, rejected, cache = tmp_path / "kept.jsonl", tmp_path / "rejected.jsonl", tmp_path / "cache.jsonl"
    args = ["generate", "reasoning", "--input", src, "--teacher", "fake", "-o", str(out)]
    args += ["--rejected", str(rejected), "--cache", str(cache), "--json", "--no-progress"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    kept, dropped = _jsonl(out), _jsonl(rejected)
    assert summary["counts"]["matched"] == len(kept) > 0 and len(kept) + len(dropped) == 30
    assert summary["match_rate"] == round(len(kept) / 30, 4)
    assert all(check_answer(r["output"], r["answer_check"]["reference"]).status == "matched" for r in kept)
    assert {r["reason"] for r in dropped} == {"answer_mismatch", "answer_unparseable"}
    paid = teacher.stats()["completions"]
    assert main(args) == 0 and teacher.stats()["completions"] == paid  # all from the cache


def test_generate_rewrite_writes_rewrites_with_the_original_and_refuses_a_goalless_custom(
    shared_data: Path, teacher: Any, tmp_path: Path, capsys: Any
) -> None:
    rows = json.loads((shared_data / "codealpaca" / "code_alpaca_2k.json").read_text(encoding="utf-8"))
    src = _write(tmp_path / "alpaca.json", rows[:10])
    out, rejected = tmp_path / "kept.jsonl", tmp_path / "rejected.jsonl"
    args = [
        "generate",
        "rewrite",
        "--input",
        src,
        "--teacher",
        "fake",
        "-o",
        str(out),
        "--rejected",
        str(rejected),
    ]
    assert main([*args, "--preset", "formal", "--json", "--no-progress"]) == 0
    kept, dropped = _jsonl(out), _jsonl(rejected)
    assert kept and len(kept) + len(dropped) == 10 and {r["reason"] for r in dropped} <= {"unchanged"}
    for r in kept:
        assert r["output"] != r["original_output"] and not r["output"].startswith(("Sure", "```"))
        assert r["rewrite"]["preset"] == "formal" and "formal" in r["rewrite"]["goal"]
    try:
        main([*args, "--preset", "custom"])
    except SystemExit as exc:
        assert "needs --instruction" in str(exc)
    else:
        raise AssertionError("a custom rewrite without an instruction must be refused")
