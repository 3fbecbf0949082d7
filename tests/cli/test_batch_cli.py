"""`--batch` on the CLI (issue 21): the calls go through the fake teacher's Batch API with the real openai
client, the command waits in process printing a line each time it looks, and an interrupted command run
again with the same --cache resumes its batches instead of submitting them again."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from app.cli import main
from tests.fake_teacher import FakeTeacher

PRICES = {"price_in_per_1k": 0.001, "price_out_per_1k": 0.002}


@pytest.fixture
def fake() -> Any:
    with FakeTeacher.start() as t:
        yield t


def _teachers(fake: FakeTeacher) -> str:
    common = {"base_url": fake.base_url, "max_retries": 2, "backoff_base_s": 0.05, "timeout_s": 30, **PRICES}
    return json.dumps(
        [
            {"name": "sync", "model": "fake-sync", **common},
            {"name": "batch", "model": "fake-batch", "batch": True, "batch_poll_s": 0.3, **common},
        ]
    )


def _interrupt_when(predicate: Any) -> threading.Thread:
    """Ctrl-C to this process once `predicate()` holds, as a person at the terminal would press it."""

    def watch() -> None:
        deadline = time.time() + 30
        while time.time() < deadline and not predicate():
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_reasoning_with_batch_waits_is_resumed_after_ctrl_c_and_writes_the_synchronous_output(
    shared_data: Path, fake: FakeTeacher, tmp_path: Path, capsys: Any
) -> None:
    rows = json.loads((shared_data / "alpacadatacleaned" / "gsm_8k_train.json").read_text(encoding="utf-8"))
    src = tmp_path / "gsm.json"
    src.write_text(json.dumps(rows[:6]), encoding="utf-8")
    common = ["generate", "reasoning", "--input", str(src), "--teachers-config", _teachers(fake), "--json"]
    sync_out = tmp_path / "sync.jsonl"
    assert main([*common, "--teacher", "sync", "-o", str(sync_out), "--no-progress"]) == 0
    sync = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    fake.set_batches(delay_s=2)  # in progress while the person presses Ctrl-C
    out, cache = tmp_path / "batch.jsonl", tmp_path / "cache.jsonl"
    batch_args = [*common, "--teacher", "batch", "-o", str(out), "--cache", str(cache), "--batch"]
    state_file = Path(f"{cache}.batches.json")

    def batch_id_saved() -> bool:
        # Once the id is saved, not merely once the batch exists at the teacher: a Ctrl-C between the two
        # leaves a state that resumes by the batch's label (another path, tested in test_batch.py).
        try:
            subs = json.loads(state_file.read_text(encoding="utf-8"))["state"]["submissions"]
        except (OSError, ValueError, KeyError):
            return False
        return bool(subs) and subs[0].get("batch_id") is not None

    watcher = _interrupt_when(batch_id_saved)
    assert main(batch_args) == 130
    watcher.join(timeout=5)
    assert "run the same command with the same --cache to resume" in capsys.readouterr().err
    saved = json.loads(Path(f"{cache}.batches.json").read_text(encoding="utf-8"))
    assert [s["batch_id"] for s in saved["state"]["submissions"]] == ["batch_1"]

    assert main(batch_args) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert "batches: 1 submitted, open: batch_1" in captured.err  # the line printed each time it looks
    assert fake.stats()["batches_created"] == 1  # resumed, not submitted again
    assert summary["batches"] == ["batch_1"] and summary["calls"] == 6
    assert summary["counts"] == sync["counts"] and summary["match_rate"] == sync["match_rate"]
    assert out.read_text(encoding="utf-8") == sync_out.read_text(encoding="utf-8")
    assert summary["cost_usd"] == pytest.approx(sync["cost_usd"] / 2, rel=1e-3)  # at batch prices


def test_batch_is_refused_for_a_teacher_without_a_batch_api_and_without_a_cache(
    fake: FakeTeacher, tmp_path: Path
) -> None:
    src = tmp_path / "rows.json"
    src.write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "Hi."}]), encoding="utf-8")
    base = ["generate", "judge", "--input", str(src), "--teachers-config", _teachers(fake), "-o"]
    base += [str(tmp_path / "out.jsonl"), "--batch"]
    with pytest.raises(SystemExit, match="does not offer a batch API"):
        main([*base, "--teacher", "sync", "--cache", str(tmp_path / "c.jsonl")])
    with pytest.raises(SystemExit, match="--batch needs --cache"):
        main([*base, "--teacher", "batch"])


def test_respond_with_batch_asks_every_sample_in_one_batch_and_writes_the_synchronous_candidates(
    shared_data: Path, fake: FakeTeacher, tmp_path: Path, capsys: Any
) -> None:
    lines = (shared_data / "instructionwild" / "user_2.jsonl").read_text(encoding="utf-8").splitlines()[:2]
    src = tmp_path / "prompts.jsonl"
    src.write_text("".join(json.dumps({"turns": [json.loads(x)["instruction"]]}) + "\n" for x in lines))
    common = ["generate", "respond", "--input", str(src), "--n", "2", "--teachers-config", _teachers(fake)]
    common += ["--json", "--no-progress"]
    sync_out, out = tmp_path / "sync.jsonl", tmp_path / "batch.jsonl"
    assert main([*common, "--teacher", "sync", "-o", str(sync_out)]) == 0
    cache = tmp_path / "cache.jsonl"
    assert main([*common, "--teacher", "batch", "-o", str(out), "--cache", str(cache), "--batch"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["batches"] == ["batch_1"] and fake.stats()["batch_requests"] == 4
    kept = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    want = [json.loads(x) for x in sync_out.read_text(encoding="utf-8").splitlines()]
    assert [r["output"] for r in kept] == [r["output"] for r in want] and len(kept) == 4


def test_self_instruct_with_batch_sends_the_instances_stage_in_batches_and_resumes_after_ctrl_c(
    shared_data: Path, fake: FakeTeacher, tmp_path: Path, capsys: Any
) -> None:
    seeds = shared_data / "self-instruct" / "seed_tasks.jsonl"
    out, cache = tmp_path / "tasks.jsonl", tmp_path / "cache.jsonl"
    args = ["generate", "self-instruct", "--seeds", str(seeds), "-n", "6", "--batch-size", "4", "--json"]
    args += ["--teachers-config", _teachers(fake), "--teacher", "batch", "-o", str(out)]
    args += ["--cache", str(cache), "--batch"]
    fake.set_batches(delay_s=2)  # the classifications' batch is in progress while the person presses Ctrl-C
    watcher = _interrupt_when(lambda: fake.stats()["batches_created"] == 1)
    assert main(args) == 130
    watcher.join(timeout=5)
    capsys.readouterr()
    live = fake.stats()["completions"]  # the instruction rounds, answered live and kept in the cache
    assert live > 0
    fake.set_batches(delay_s=0.3)
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # Resumed: the instruction rounds from the cache, the open batch polled, the instances' batch after it.
    assert fake.stats()["completions"] == live and fake.stats()["batches_created"] == 2
    assert summary["batches"] == ["batch_1", "batch_2"]
    assert summary["stop_reason"] == "target" and summary["kept_tasks"] == 6
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert len({r["instruction"] for r in rows if r["status"] == "kept"}) == 6
    # The summary counts both batches (at half price) and the live instruction calls of both runs (full price).
    assert summary["calls"] == live + fake.stats()["batch_requests"]
    batch_cost = json.loads(Path(f"{cache}.batches.json").read_text(encoding="utf-8"))["state"]["cost_usd"]
    assert 0 < batch_cost < summary["cost_usd"]
