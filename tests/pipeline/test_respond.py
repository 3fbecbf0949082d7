"""The respond and rank pipelines' pure parts: prompts from every row shape, aspect ratings as judges write
them; and `generate respond` without the service on real prompts (InstructionWild) and the fake teacher."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.cli import main
from app.pipeline.rank import parse_aspects
from app.pipeline.respond import RespondParams, item_from_row, to_messages


def test_rows_of_every_prompt_shape_become_the_conversation_before_the_answer():
    alpaca = item_from_row("a", {"instruction": "Sum", "input": "1 2", "output": "3", "system": "Be terse."})
    assert alpaca is not None and alpaca.messages == (("system", "Be terse."), ("user", "Sum\n\n1 2"))
    chat = item_from_row(
        "b",
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
        sample_index=2,
    )
    assert chat is not None and chat.messages == (("user", "Hi"),) and chat.sample_index == 2
    assert item_from_row("c", {"turns": ["First?", "Second?"]}).messages == (("user", "First?"),)  # type: ignore[union-attr]
    assert item_from_row("d", {"instruction": "  ", "output": "orphan"}) is None
    assert item_from_row("e", {"messages": [{"role": "assistant", "content": "alone"}]}) is None
    # The sampler's system prompt only where the prompt has none of its own.
    params = RespondParams(system_prompt="You are kind.")
    assert to_messages(alpaca, params=params)[0]["content"] == "Be terse."
    assert to_messages(chat, params=params)[0] == {"role": "system", "content": "You are kind."}


@pytest.mark.parametrize(
    ("text", "scores"),
    [
        (
            'Clear and correct.\n{"helpfulness": 4, "honesty": 5, "instruction_following": 4, "harmlessness": 5}',
            (4, 5, 4, 5),
        ),
        (
            '```json\n{"helpfulness": "3", "honesty": 2.0, "instruction_following": 1, "harmlessness": 5,'
            ' "rationale": "Vague."}\n```',
            (3, 2, 1, 5),
        ),
        ("Helpfulness: 2\nHonesty: 4\nInstruction_following - 3\nHarmlessness: 5", (2, 4, 3, 5)),
        ('{"helpfulness": 6, "honesty": 5, "instruction_following": 4, "harmlessness": 5}', None),
        ('{"helpfulness": 4, "honesty": 5}', None),
        ("I would rate it highly overall.", None),
    ],
)
def test_aspect_ratings_are_read_from_json_or_lines_and_never_guessed(text: str, scores: Any):
    parsed = parse_aspects(text)
    if scores is None:
        assert parsed is None
    else:
        assert parsed is not None
        assert (
            tuple(
                parsed.scores[a] for a in ("helpfulness", "honesty", "instruction_following", "harmlessness")
            )
            == scores
        )


def test_generate_respond_writes_n_candidates_per_real_prompt_and_a_rerun_pays_nothing(
    shared_data: Path, teacher: Any, tmp_path: Path, capsys: Any
):
    lines = (shared_data / "instructionwild" / "user_2.jsonl").read_text(encoding="utf-8").splitlines()[:5]
    src = tmp_path / "prompts.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")  # prompts only: no outputs
    out, cache = tmp_path / "candidates.jsonl", tmp_path / "cache.jsonl"
    args = ["generate", "respond", "--input", str(src), "--teacher", "fake", "-o", str(out), "--n", "2"]
    args += ["--cache", str(cache), "--json", "--no-progress"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 10 and summary["calls"] == 10
    prompts = [json.loads(line)["instruction"] for line in lines]
    assert sorted(r["instruction"] for r in rows) == sorted(prompts * 2)
    assert {r["candidate"]["sample_index"] for r in rows} == {0, 1}
    assert all(r["output"].strip() and r["candidate"]["model"] == "fake-model" for r in rows)
    paid = teacher.stats()["completions"]
    assert main(args) == 0 and teacher.stats()["completions"] == paid  # all from the cache
