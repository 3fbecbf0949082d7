"""`instructforge eval` without the service: MT-Bench prompts, two teacher systems, the fake teacher judging."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from app.cli import main


def _teachers(teacher) -> str:
    entries = [
        {"name": name, "base_url": teacher.base_url, "model": model, "max_concurrency": 4}
        for name, model in (("fake", "fake-model"), ("other", "other-model"))
    ]
    return json.dumps(entries)


def test_eval_writes_answers_and_verdicts_and_a_first_position_judge_gives_only_ties(
    teacher, shared_data, tmp_path, capsys
):
    teacher.set_judge("first")
    out = tmp_path / "eval.jsonl"
    code = main(
        [
            "eval",
            str(shared_data / "fastchat" / "mt_bench_question.jsonl"),
            "--max-prompts",
            "6",
            "--teacher",
            "fake",
            "--teacher",
            "other",
            "--judge",
            "fake",
            "--teachers-config",
            _teachers(teacher),
            "--cache",
            str(tmp_path / "cache.jsonl"),
            "-o",
            str(out),
            "--json",
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    overall = next(r for r in printed["pairwise"]["win_rates"] if r["category"] is None)
    assert (overall["system_a"], overall["system_b"]) == ("teacher fake", "teacher other")
    assert (overall["n"], overall["ties"], overall["consistent"]) == (6, 6, 0)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert Counter(line["type"] for line in lines) == {
        "evaluation": 1,
        "system": 2,
        "prompt": 6,
        "answer": 12,
        "verdict": 6,
    }
    assert all(line["category"] for line in lines if line["type"] == "prompt")  # MT-Bench's categories


def test_eval_refuses_fewer_than_two_systems_and_unknown_teachers(teacher, shared_data, tmp_path, capsys):
    prompts = str(shared_data / "fastchat" / "mt_bench_question.jsonl")
    common = ["--judge", "fake", "--teachers-config", _teachers(teacher), "-o", str(tmp_path / "o.jsonl")]
    assert main(["eval", prompts, "--teacher", "fake", *common]) == 1
    assert "at least two systems" in capsys.readouterr().err
    assert main(["eval", prompts, "--teacher", "fake", "--teacher", "ghost", *common]) == 1
    assert "--teacher ghost" in capsys.readouterr().err
    assert main(["eval", prompts, "--teacher", "fake", "--run", str(tmp_path), *common]) == 1
    assert "not a training run" in capsys.readouterr().err
    assert not Path(tmp_path / "o.jsonl").exists()


@pytest.mark.slow
def test_eval_generates_with_two_local_base_models_and_judges_them(teacher, tmp_path, capsys):
    pytest.importorskip("torch")
    from tests.trainer.conftest import CHAT_TEMPLATE, _save_model, _tokenizer

    models = tmp_path / "models"
    _save_model(models / "tiny-llama", _tokenizer(None))
    _save_model(models / "tiny-llama-chat", _tokenizer(CHAT_TEMPLATE))
    prompts = tmp_path / "prompts.json"
    prompts.write_text(
        json.dumps(
            [{"instruction": f"Name a colour number {i}.", "input": "", "output": "Red."} for i in range(3)]
        )
    )
    out = tmp_path / "eval.jsonl"
    args = [
        "eval",
        str(prompts),
        "--base",
        "tiny-llama",
        "--base",
        "tiny-llama-chat",
        "--models-dir",
        str(models),
    ]
    args += [
        "--judge",
        "fake",
        "--teachers-config",
        _teachers(teacher),
        "--max-new-tokens",
        "6",
        "-o",
        str(out),
    ]
    assert main([*args, "--json"]) == 0, capsys.readouterr().err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    answers = [line for line in lines if line["type"] == "answer"]
    assert sorted({a["system"] for a in answers}) == ["base tiny-llama", "base tiny-llama-chat"]
    assert len(answers) == 6 and sum(line["type"] == "verdict" for line in lines) == 3
    assert (tmp_path / "eval.jsonl.work" / "base-tiny-llama" / "answers.jsonl").is_file()
