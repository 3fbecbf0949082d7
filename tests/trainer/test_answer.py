"""Evaluation generation (`python -m trainer.answer`): batched greedy equals one at a time, resume after a
kill, cancel, validation loss against the trainer's, prompt formats of bare base models, seeded sampling."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from trainer.answer import AnswerSpec, run
from trainer.contract import (
    ANSWERS_FILE,
    CANCEL_FILE,
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_OK,
    STATUS_FILE,
    VAL_METRICS_FILE,
)
from trainer.data import record_to_conversation
from trainer.formats import build_format, encode_conversation
from trainer.infer import encode_prompts, generate, iter_completions, load_for_inference
from trainer.methods import load_base_model, load_tokenizer
from trainer.run import main as train_main

from .conftest import seed_task_records

REPO = Path(__file__).resolve().parents[2]


def _prompts(n: int) -> list[dict[str, Any]]:
    """Seed-task prompts of very different lengths (some with an input section), with string ids."""
    out = []
    for i, r in enumerate(seed_task_records()[:n]):
        content = r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "")
        out.append({"id": f"p-{i}", "messages": [{"role": "user", "content": content}]})
    return out


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _answers(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / ANSWERS_FILE).read_text(encoding="utf-8").splitlines()]


def _status(out: Path) -> dict[str, Any]:
    status: dict[str, Any] = json.loads((out / STATUS_FILE).read_text(encoding="utf-8"))
    return status


def _spec(tmp_path: Path, models_root: Path, prompts: list[dict[str, Any]], **overrides: Any) -> AnswerSpec:
    values: dict[str, Any] = {
        "base_model": "tiny-llama",
        "models_dir": str(models_root),
        "adapter_dir": None,
        "prompts_path": str(_write_jsonl(tmp_path / "prompts.jsonl", prompts)),
        "output_dir": str(tmp_path / "out"),
        "max_new_tokens": 12,
        "greedy": True,
        "temperature": 0.7,
        "top_p": 0.9,
        "seed": 0,
        "batch_size": 4,
        "val_path": None,
    }
    values.update(overrides)
    return AnswerSpec(**values)


def _start(spec: AnswerSpec, tmp_path: Path) -> subprocess.Popen[bytes]:
    spec_path = tmp_path / "answer_spec.json"
    spec_path.write_text(spec.model_dump_json(), encoding="utf-8")
    return subprocess.Popen(
        [sys.executable, "-m", "trainer.answer", str(spec_path)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        # one thread, as in-process tests (conftest): on a busy small box more threads only fight
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _wait_for_lines(out: Path, proc: subprocess.Popen[bytes], count: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    path = out / ANSWERS_FILE
    while time.monotonic() < deadline:
        if path.is_file() and path.read_bytes().count(b"\n") >= count:
            return
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} first: {proc.stderr.read().decode()[-3000:]}")  # type: ignore[union-attr]
        time.sleep(0.01)
    raise AssertionError(f"no {count} answers in {timeout} s")


@pytest.fixture(scope="module")
def tiny(base_model: Path) -> tuple[Any, Any]:
    tokenizer = load_tokenizer(base_model, local_only=True)
    model = load_base_model(base_model, dtype=torch.float32, attn_implementation="sdpa").eval()
    return model, tokenizer


def test_batched_greedy_generation_equals_one_prompt_at_a_time_token_for_token(tiny):
    model, tokenizer = tiny
    fmt = build_format("alpaca", tokenizer)
    prompt_ids = encode_prompts(fmt, tokenizer, [p["messages"] for p in _prompts(11)])
    assert len({len(p) for p in prompt_ids}) >= 8, "prompts of different lengths"

    def tokens(f: Any, batch_size: int) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in prompt_ids]
        for batch in iter_completions(
            model, tokenizer, f, prompt_ids, max_new_tokens=20, batch_size=batch_size
        ):
            for c in batch:
                out[c.index] = c.token_ids
        return out

    single = tokens(fmt, 1)
    # a random model never says EOS: stop on a token it does say, so rows of a batch end at different steps
    counts: dict[int, int] = {}
    for row in single:
        for t in set(row[2:]):
            counts[t] = counts.get(t, 0) + 1
    frequent = max(counts, key=lambda t: counts[t])
    stopping = dataclasses.replace(
        fmt, stop_tokens=(fmt.stop_tokens[0], tokenizer.convert_ids_to_tokens(frequent))
    )
    single = tokens(stopping, 1)
    assert len({len(row) for row in single}) >= 3, "rows stop at different lengths"
    assert tokens(stopping, 4) == single
    assert tokens(stopping, 11) == single
    # generate() returns them decoded, in the order given, whatever the batch size
    texts = [tokenizer.decode(row, skip_special_tokens=True) for row in single]
    assert (
        generate(model, tokenizer, stopping, [p["messages"] for p in _prompts(11)], max_new_tokens=20)
        == texts
    )


def test_sampling_is_reproducible_with_its_seed_and_leaves_the_callers_rng_alone(tiny, tmp_path, models_root):
    model, tokenizer = tiny
    fmt = build_format("alpaca", tokenizer)
    prompts = [p["messages"] for p in _prompts(6)]
    kwargs: dict[str, Any] = {"max_new_tokens": 16, "greedy": False, "temperature": 0.9, "top_p": 0.95}
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = generate(model, tokenizer, fmt, prompts, seed=7, batch_size=4, **kwargs)
    assert torch.equal(torch.rand(3), expected_next)
    assert generate(model, tokenizer, fmt, prompts, seed=7, batch_size=4, **kwargs) == first
    assert generate(model, tokenizer, fmt, prompts, seed=8, batch_size=4, **kwargs) != first
    assert first != generate(model, tokenizer, fmt, prompts, max_new_tokens=16)

    # and through the spec: two runs of the same sampling spec write the same answers
    runs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        spec = _spec(tmp_path / name, models_root, _prompts(6), greedy=False, seed=7, max_new_tokens=16)
        assert run(spec) == EXIT_OK
        runs.append(_answers(Path(spec.output_dir)))
    assert runs[0] == runs[1]


def test_a_bare_base_model_uses_its_chat_template_when_it_has_one_else_alpaca(
    tmp_path, models_root, chat_base_model, base_model
):
    prompts = _prompts(5)
    for name, expected in (("tiny-llama-chat", "chat_template"), ("tiny-llama", "alpaca")):
        (tmp_path / name).mkdir()
        spec = _spec(tmp_path / name, models_root, prompts, base_model=name)
        assert run(spec) == EXIT_OK
        out = Path(spec.output_dir)
        status = _status(out)
        assert status | {"state": "succeeded", "done": 5, "total": 5, "prompt_format": expected} == status
        tokenizer = load_tokenizer(models_root / name, local_only=True)
        model = load_base_model(models_root / name, dtype=torch.float32, attn_implementation="sdpa")
        fmt = build_format(expected, tokenizer)  # type: ignore[arg-type]
        wanted = generate(model, tokenizer, fmt, [p["messages"] for p in prompts], max_new_tokens=12)
        assert [a["answer"] for a in _answers(out)] != [], "answers written"
        assert {a["id"]: a["answer"] for a in _answers(out)} == {
            p["id"]: w for p, w in zip(prompts, wanted, strict=True)
        }
    # the chat template puts its own markers around the prompt: the two formats give other prompt tokens
    chat_tok = load_tokenizer(chat_base_model, local_only=True)
    assert encode_prompts(build_format("chat_template", chat_tok), chat_tok, ["hi"]) != encode_prompts(
        build_format("alpaca", chat_tok), chat_tok, ["hi"]
    )


def test_a_prompt_that_is_no_prompt_gets_an_error_line_and_the_others_are_answered(
    tmp_path, models_root, base_model
):
    prompts = [
        *_prompts(2),
        {
            "id": "ends-with-model",
            "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
        },
        {"id": "empty", "messages": []},
    ]
    spec = _spec(tmp_path, models_root, prompts)
    assert run(spec) == EXIT_OK
    answers = {a["id"]: a for a in _answers(Path(spec.output_dir))}
    assert set(answers) == {"p-0", "p-1", "ends-with-model", "empty"}
    assert (
        answers["ends-with-model"]["answer"] == "" and "not the user" in answers["ends-with-model"]["error"]
    )
    assert answers["empty"]["error"] == "no messages"
    assert answers["p-0"]["tokens"] == 12 and answers["p-0"]["truncated"] is True
    assert _status(Path(spec.output_dir))["done"] == 4


def test_a_base_model_outside_models_dir_fails_with_the_reason_in_status(tmp_path, models_root, base_model):
    spec = _spec(tmp_path, models_root / "tiny-llama", _prompts(2), base_model="../tiny-llama-chat")
    assert run(spec) == EXIT_FAILED
    status = _status(Path(spec.output_dir))
    assert status["state"] == "failed"
    assert "resolves outside models_dir" in status["error"]


def test_validation_loss_equals_the_trainers_eval_loss_and_every_prompt_is_answered(
    make_config, tmp_path, models_root, base_model, alpaca_file
):
    config = make_config(
        max_steps=4, lr=1e-2, val_fraction=0.2, dropout=0.0, output_dir=str(tmp_path / "run")
    )
    summary = train_main(config)
    assert summary.state == "succeeded" and summary.eval_loss is not None
    # the run's held-out records, by the trainer's own rule (prepare_data)
    records = json.loads(alpaca_file.read_text(encoding="utf-8"))
    order = list(range(len(records)))
    random.Random(config.seed).shuffle(order)
    held_out = [records[i] for i in sorted(order[: max(1, round(len(records) * config.val_fraction))])]
    val_path = _write_jsonl(tmp_path / "validation.jsonl", held_out)
    prompts = _prompts(9)

    spec = _spec(
        tmp_path,
        models_root,
        prompts,
        adapter_dir=config.output_dir,
        val_path=str(val_path),
        batch_size=3,
    )
    proc = _start(spec, tmp_path)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == EXIT_OK, stderr.decode()[-3000:]
    out = Path(spec.output_dir)

    metrics = json.loads((out / VAL_METRICS_FILE).read_text(encoding="utf-8"))
    assert metrics["records"] == len(held_out) == 4
    assert metrics["loss"] == pytest.approx(summary.eval_loss, rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]), rel=1e-12)
    model, tokenizer, fmt = load_for_inference(config.output_dir)
    convs = [record_to_conversation(r)[0] or [] for r in held_out]
    # every response token plus its end of turn: what the loss averages over
    trained = [encode_conversation(fmt, tokenizer, c).num_trained() for c in convs]
    assert metrics["tokens"] == sum(trained)

    answers = _answers(out)
    assert sorted(a["id"] for a in answers) == sorted(p["id"] for p in prompts)
    wanted = generate(model, tokenizer, fmt, [p["messages"] for p in prompts], max_new_tokens=12)
    assert {a["id"]: a["answer"] for a in answers} == {
        p["id"]: w for p, w in zip(prompts, wanted, strict=True)
    }
    status = _status(out)
    assert status | {"state": "succeeded", "done": 9, "total": 9, "prompt_format": "alpaca"} == status
    assert "adapter" in status["prompt_format_source"]


def test_a_killed_run_resumes_and_answers_every_prompt_exactly_once(tmp_path, models_root, tiny):
    prompts = _prompts(30)
    spec = _spec(tmp_path, models_root, prompts, batch_size=1, max_new_tokens=24)
    out = Path(spec.output_dir)
    proc = _start(spec, tmp_path)
    _wait_for_lines(out, proc, 2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _answers(out)
    assert 2 <= len(before) < len(prompts), "killed mid-run"
    # what a kill in the middle of a write leaves: a line cut short
    with (out / ANSWERS_FILE).open("a", encoding="utf-8") as fh:
        fh.write('{"id": "p-29", "answer": "half a li')

    # greedy answers do not depend on the batching: the rest may go in bigger batches
    proc = _start(spec.model_copy(update={"batch_size": 8}), tmp_path)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == EXIT_OK, stderr.decode()[-3000:]
    answers = _answers(out)  # every line parses: the cut one is gone
    ids = [a["id"] for a in answers]
    assert sorted(ids) == sorted(p["id"] for p in prompts) and len(ids) == len(set(ids))
    assert answers[: len(before)] == before, "answers from before the kill stay as they were"
    model, tokenizer = tiny
    wanted = generate(
        model,
        tokenizer,
        build_format("alpaca", tokenizer),
        [p["messages"] for p in prompts],
        max_new_tokens=24,
    )
    assert {a["id"]: a["answer"] for a in answers} == {
        p["id"]: w for p, w in zip(prompts, wanted, strict=True)
    }
    assert _status(out) | {"state": "succeeded", "done": 30, "total": 30} == _status(out)


def test_the_cancel_file_stops_the_run_before_its_next_batch(tmp_path, models_root, base_model):
    prompts = _prompts(40)
    spec = _spec(tmp_path, models_root, prompts, batch_size=1, max_new_tokens=24)
    out = Path(spec.output_dir)
    proc = _start(spec, tmp_path)
    _wait_for_lines(out, proc, 1)
    (out / CANCEL_FILE).touch()
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_CANCELLED, stderr.decode()[-3000:]
    answers = _answers(out)
    status = _status(out)
    assert status["state"] == "cancelled"
    assert 1 <= len(answers) == status["done"] < len(prompts)


def test_two_generators_on_one_folder_answer_every_prompt_once(tmp_path, models_root, base_model):
    # what a SIGKILLed worker's retry does: the orphaned generator still runs when the next one starts
    prompts = _prompts(12)
    spec = _spec(tmp_path, models_root, prompts, batch_size=2)
    first, second = _start(spec, tmp_path), _start(spec, tmp_path)
    for proc in (first, second):
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == EXIT_OK, stderr.decode()[-3000:]
    ids = [a["id"] for a in _answers(Path(spec.output_dir))]
    assert sorted(ids) == sorted(p["id"] for p in prompts)
