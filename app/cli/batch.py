"""`--batch` for the CLI's teacher commands whose calls do not depend on each other (judge, backtranslate,
rewrite, reasoning, respond, and Self-Instruct's instances stage): the calls go through the teacher's Batch API, at batch prices, and the command waits
for them in this process, printing a line each time it looks.

The same mechanism as the service's batch mode (app/pipeline/llm/batch.py): the command's pipeline runs
against the cache to find what is missing, the missing calls are submitted, polled and their answers stored
in the ``--cache`` file; when nothing is missing the pipeline runs for real from the cache, so the output is
what the synchronous command writes on the same answers. The batches' state (their ids and labels) is kept
beside the cache in ``<cache>.batches.json``, saved before each step that could be lost: a command
interrupted or killed while it waits is resumed by running it again with the same ``--cache``, and no
batch is submitted twice.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from app.pipeline.llm import Gateway, ResponseCache, TeacherConfig
from app.pipeline.llm.batch import BatchRunner, BatchState, collect_missing


def add_batch_option(p: argparse.ArgumentParser, *, what: str = "the calls") -> None:
    p.add_argument(
        "--batch",
        action="store_true",
        help=f"send {what} through the teacher's Batch API (about half price, answers within 24 h; the "
        "teacher needs batch: true); waits in this process and needs --cache: interrupted, the same command "
        "with the same --cache resumes the batches",
    )


def state_path(cache: str) -> Path:
    return Path(f"{cache}.batches.json")


def load_state(path: Path) -> tuple[str, BatchState]:
    """The label and state of a --cache's batches (a new label and nothing submitted, the first time)."""
    if not path.is_file():
        return f"if-cli-{secrets.token_hex(6)}", BatchState()
    data = json.loads(path.read_text(encoding="utf-8"))
    return str(data["label"]), BatchState.from_json(data.get("state"))


def load_live(path: Path) -> tuple[int, float]:
    """The calls a command's pipeline made live beside its batches (Self-Instruct's instruction rounds)
    and their cost, over every run on this --cache, as last saved."""
    if not path.is_file():
        return 0, 0.0
    live = json.loads(path.read_text(encoding="utf-8")).get("live") or {}
    return int(live.get("calls", 0)), float(live.get("cost_usd", 0.0))


def _save(path: Path, label: str, state: BatchState, live: tuple[int, float] = (0, 0.0)) -> None:
    tmp = path.with_name(path.name + ".tmp")
    data = {"label": label, "state": state.to_json(), "live": {"calls": live[0], "cost_usd": live[1]}}
    tmp.write_text(json.dumps(data), encoding="utf-8")
    tmp.replace(path)  # whole or not at all: a kill mid-write leaves the last state


def describe(state: BatchState) -> str:
    open_ = [f"{s.batch_id} {s.provider_status or 'submitted'}" for s in state.open_all]
    shown = f"open: {', '.join(open_)}" if open_ else "none open"
    return (
        f"batches: {len(state.submissions)} submitted, {shown}; {state.answered} answers "
        f"(${state.cost_usd:.4f} at batch prices)"
    )


def answer_in_batches(
    *,
    teacher: TeacherConfig,
    cache: ResponseCache,
    cache_path: str,
    budget_usd: float | None,
    pipeline: Callable[[Gateway], Awaitable[Any]],
    show: bool,
    sleep: Callable[[float], None] = time.sleep,
    live: Callable[[], tuple[int, float]] = lambda: (0, 0.0),
) -> tuple[Mapping[str, str], BatchState]:
    """Submit, poll and collect until every call ``pipeline`` makes is answered in ``cache`` (or failed in
    ``batch_max_attempts`` batches); returns those failed, with their errors, and the batches' state.
    ``pipeline`` must write nothing: it is run only to find the calls. ``live``: the calls the pipeline
    makes live on its own gateway and their cost, over every run on this cache (Self-Instruct's instruction
    rounds, starting from :func:`load_live`): saved with the state, and counted in the budget."""
    path = state_path(cache_path)
    label, state = load_state(path)
    spent = state.cost_usd
    runner = BatchRunner(
        teacher,
        job_label=label,
        cache=cache,
        save=lambda s: _save(path, label, s, live()),
        state=state,
        budget_left_usd=None if budget_usd is None else max(0.0, budget_usd - spent),
    )
    try:
        while True:
            if budget_usd is not None:
                runner.budget_left_usd = max(0.0, budget_usd - runner.state.cost_usd - live()[1])
            step = runner.step(collect_missing(teacher, pipeline, cache=cache, failed=runner.given_up()))
            if show:
                wait = f"; looking again in {step.seconds:g} s" if step.action == "wait" else ""
                print(f"{describe(runner.state)}{wait}", file=sys.stderr, flush=True)
            if step.action == "final":
                _save(path, label, runner.state, live())
                return step.failed, runner.state
            if step.action == "wait":
                sleep(step.seconds)
    finally:
        runner.close()
