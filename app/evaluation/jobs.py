"""The `evaluate` job, run by the gpu worker: freeze the prompt set, have every system answer it, judge every
pair in both orders, store the results.

Why a killed worker loses and repeats (almost) nothing:

- **Prompts** are frozen into `evaluation_prompts` once, in one transaction; a restart reads them back, so a
  dataset edited meanwhile does not change a running evaluation.
- **Answers** are stored per (system, prompt) as they come, ignoring conflicts. A local system's generator
  (`python -m trainer.answer`, a child process like the trainer) appends to its answers file, which we
  tail; on a restart it is given only the prompts still unanswered. A teacher system's calls go through
  the gateway with the database cache, so an answer paid for but not stored is replayed for free.
- **A generator left running** by a killed worker (its own session outlives the worker) is killed by the
  redelivered job before it starts another on the same machine (`stop_previous`, by the pid it recorded).
- **Verdicts** are stored per comparison as `app.pipeline.pairwise` emits them, and handed back as `done`
  on a restart. Verdicts finished but not yet emitted when the worker died (at most one window of
  `batch_size` comparisons) are asked for again, and their answers come from the cache: the only calls
  paid twice are those in flight at the kill, at most one concurrency window.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from app.config import get_settings
from app.db import insert_ignoring
from app.errors import Invalid, NotFound
from app.evaluation.models import (
    Evaluation,
    EvaluationAnswer,
    EvaluationPrompt,
    EvaluationSystem,
    EvaluationVerdict,
)
from app.evaluation.prompts import SetPrompt, set_prompt
from app.evaluation.schemas import EvaluationJobParams
from app.generation.cache import CallLog
from app.jobs.context import JobCancelled, JobContext, JobPaused
from app.pipeline import pairwise as pw
from app.pipeline.llm import (
    BudgetExceeded,
    Gateway,
    Sampling,
    TeacherConfig,
    TeacherUnavailable,
    run_coroutine,
)
from app.training.models import TrainingRun
from trainer.contract import (
    ANSWER_SPEC_FILE,
    ANSWERS_FILE,
    CANCEL_FILE,
    EXIT_CANCELLED,
    EXIT_OK,
    STATUS_FILE,
    VAL_METRICS_FILE,
)

POLL_S = 1.0
CANCEL_GRACE_S = 120.0
ANSWER_LOG = "answer.log"  # the generator's stdout and stderr, appended across restarts
PROMPTS_FILE = "prompts.jsonl"
VAL_FILE = "validation.jsonl"
PID_FILE = "generator.pid"  # the running generator's process group, for a redelivered job to stop
MAX_LEAKS_LISTED = 500


@dataclass
class SystemInfo:
    id: int
    name: str
    kind: str
    base_model: str | None
    teacher: str | None
    run_id: int | None
    artifacts_dir: str | None = None
    snapshot_id: int | None = None
    run_config: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalInfo:
    id: int
    params: dict[str, Any]
    judge: str
    systems: list[SystemInfo]


# --------------------------------------------------------------------------------------------------
# The prompt set


def held_out(records: Sequence[Any], *, val_fraction: float, seed: int) -> list[Any]:
    """The validation records of a run trained on `records` (in snapshot order) with this fraction and seed.

    The same rule as trainer/run.py's prepare_data (shuffle the positions with Random(seed), the first
    max(1, round(n * val_fraction)) are held out), over the records it keeps (`trainable`), so a run's
    validation split is exactly the prompts it never trained on. app.pipeline.formats.split rounds half up and keeps one record for training; on the
    rare n * val_fraction ending in exactly .5 the two would differ, and here the trainer's rule is the one
    that matters."""
    n = len(records)
    if val_fraction <= 0 or n < 2:
        return []
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(n * val_fraction))
    return [records[i] for i in sorted(order[:n_val])]


def trainable(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The snapshot records the trainer keeps (trainer.data drops empty and response-less ones before it
    splits): the positions `held_out` shuffles must be the trainer's."""
    from app.pipeline.formats import to_openai
    from trainer.data import record_to_conversation

    return [r for r in records if record_to_conversation(to_openai(r))[0] is not None]


def select_prompts(
    db: Any, *, snapshot_id: int | None, dataset_id: int | None, split: str, params: dict[str, Any]
) -> list[SetPrompt]:
    """The prompt set an evaluation with these settings answers (read, not stored): the job freezes it,
    an estimate prices it."""
    from app.records.models import Record
    from app.snapshots.service import iter_contents

    records: list[dict[str, Any]]
    if snapshot_id is not None:
        records = list(iter_contents(db, snapshot_id))
        if split == "validation":
            records = held_out(
                trainable(records), val_fraction=float(params["val_fraction"]), seed=int(params["seed"])
            )
    elif dataset_id is not None:
        rows = db.scalars(select(Record).where(Record.dataset_id == dataset_id).order_by(Record.id))
        records = [
            {
                "record_id": r.id,
                "instruction": r.instruction,
                "input": r.input,
                "output": r.output,
                "system": r.system,
                "messages": r.messages,
                "label": r.label,
            }
            for r in rows
        ]
    else:
        raise Invalid("the evaluation's dataset or snapshot was deleted", field="prompt_set")
    prompts = [p for r in records if (p := set_prompt(str(r["record_id"]), r, record_id=r["record_id"]))]
    if params.get("max_prompts"):
        prompts = prompts[: int(params["max_prompts"])]
    return prompts


def _freeze_prompts(ctx: JobContext, evaluation_id: int) -> None:
    """Store the prompt set once; a restart finds it stored and keeps it."""
    with ctx.session() as db:
        if db.scalar(select(func.count()).where(EvaluationPrompt.evaluation_id == evaluation_id)):
            return
        ev = db.get(Evaluation, evaluation_id)
        if ev is None:
            raise NotFound(f"evaluation {evaluation_id} not found")
        prompts = select_prompts(
            db, snapshot_id=ev.snapshot_id, dataset_id=ev.dataset_id, split=ev.split, params=ev.params
        )
        if not prompts:
            raise Invalid("the prompt set has no prompts", field="prompt_set")
        db.add_all(
            EvaluationPrompt(
                evaluation_id=evaluation_id,
                position=i,
                prompt_id=p.prompt_id,
                record_id=p.record_id,
                text=p.text,
                messages=p.messages,
                category=p.category,
                reference=p.reference,
            )
            for i, p in enumerate(prompts)
        )


def _load(ctx: JobContext, evaluation_id: int) -> tuple[EvalInfo, list[SetPrompt]]:
    with ctx.session() as db:
        ev = db.get(Evaluation, evaluation_id)
        if ev is None:
            raise NotFound(f"evaluation {evaluation_id} not found")
        systems = []
        for s in db.scalars(
            select(EvaluationSystem)
            .where(EvaluationSystem.evaluation_id == evaluation_id)
            .order_by(EvaluationSystem.position)
        ):
            info = SystemInfo(s.id, s.name, s.kind, s.base_model, s.teacher, s.training_run_id)
            if s.kind == "run":
                run = db.get(TrainingRun, s.training_run_id) if s.training_run_id is not None else None
                if run is None:
                    raise Invalid(f"system {s.name!r}: its training run was deleted", field="systems")
                info.artifacts_dir, info.snapshot_id, info.run_config = (
                    run.artifacts_dir,
                    run.snapshot_id,
                    dict(run.config),
                )
            systems.append(info)
        prompts = [
            SetPrompt(p.prompt_id, p.record_id, p.text, list(p.messages), p.category, p.reference)
            for p in db.scalars(
                select(EvaluationPrompt)
                .where(EvaluationPrompt.evaluation_id == evaluation_id)
                .order_by(EvaluationPrompt.position)
            )
        ]
        return EvalInfo(ev.id, dict(ev.params), ev.judge_teacher, systems), prompts


def _answered(ctx: JobContext, system_id: int) -> set[str]:
    with ctx.session() as db:
        return set(
            db.scalars(select(EvaluationAnswer.prompt_id).where(EvaluationAnswer.system_id == system_id))
        )


def _store_answers(
    ctx: JobContext, ev: EvalInfo, system: SystemInfo, rows: list[tuple[str, str, int | None]]
) -> None:
    if not rows:
        return
    with ctx.session() as db:
        stmt = insert_ignoring(db, EvaluationAnswer, index_elements=["system_id", "prompt_id"])
        db.execute(
            stmt,
            [
                {
                    "evaluation_id": ev.id,
                    "system_id": system.id,
                    "prompt_id": pid,
                    "answer": text,
                    "tokens": tokens,
                }
                for pid, text, tokens in rows
            ],
        )


# --------------------------------------------------------------------------------------------------
# Stage 1: answers


class Progress:
    """The job's progress over all stages: answers stored, then comparisons (and scores) judged."""

    def __init__(self, ctx: JobContext, log: CallLog, total: int) -> None:
        self.ctx, self.log, self.total = ctx, log, total
        self.done = 0
        self.counters: dict[str, Any] = {"stage": "answers", "answers": {}, "judged": 0, "scored": 0}

    def report(self) -> None:
        self.ctx.progress(self.done, self.total, counters=self.counters, usage=self.log.flush())


def _models_dir() -> Path:
    return get_settings().models_dir.resolve()


def _work_dir(evaluation_id: int, system: SystemInfo) -> Path:
    path = (
        get_settings().data_dir / "evaluations" / f"evaluation-{evaluation_id}" / f"system-{system.id}"
    ).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _validation_records(system: SystemInfo, out: Path) -> Path | None:
    """The run's held-out records (from the dataset file it trained on), for validation loss; None if none."""
    config = system.run_config
    val_fraction = float(config.get("val_fraction") or 0.0)
    data = Path(system.artifacts_dir or "") / "dataset.jsonl"
    if system.kind != "run" or val_fraction <= 0 or not data.is_file():
        return None
    from trainer.data import record_to_conversation

    lines = [
        line
        for line in data.read_text(encoding="utf-8").splitlines()
        if line.strip() and record_to_conversation(json.loads(line))[0] is not None
    ]
    val = held_out(lines, val_fraction=val_fraction, seed=int(config.get("seed") or 0))
    if not val:
        return None
    path = out / VAL_FILE
    path.write_text("".join(line + "\n" for line in val), encoding="utf-8")
    return path


def _ingest(
    ctx: JobContext, ev: EvalInfo, system: SystemInfo, path: Path, offset: int, wanted: set[str]
) -> tuple[int, int]:
    """Store answers appended since `offset` (ids already stored are ignored); returns (offset, stored)."""
    if not path.is_file():
        return offset, 0
    with path.open("rb") as fh:
        fh.seek(offset)
        chunk = fh.read()
    complete = chunk[: chunk.rfind(b"\n") + 1]
    rows: list[tuple[str, str, int | None]] = []
    for line in complete.decode("utf-8", "replace").splitlines():
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(item, dict) or str(item.get("id")) not in wanted:
            continue
        wanted.discard(str(item["id"]))
        tokens = item.get("tokens")
        rows.append(
            (str(item["id"]), str(item.get("answer") or ""), tokens if isinstance(tokens, int) else None)
        )
    _store_answers(ctx, ev, system, rows)
    return offset + len(complete), len(rows)


def _generate_local(
    ctx: JobContext, ev: EvalInfo, system: SystemInfo, todo: list[SetPrompt], progress: Progress
) -> dict[str, Any] | None:
    """Run `python -m trainer.answer` for the unanswered prompts (and validation loss); returns val metrics."""
    import importlib.util

    out = _work_dir(ev.id, system)
    stop_previous(out)
    val_path = _validation_records(system, out)
    metrics_file = out / VAL_METRICS_FILE
    if not todo and (val_path is None or metrics_file.is_file()):
        return _read_json(metrics_file) if val_path is not None else None
    if importlib.util.find_spec("trainer.answer") is None:
        raise Invalid("this worker has no trainer.answer (the generator for evaluations); update it")
    prompts_path = out / PROMPTS_FILE
    with prompts_path.open("w", encoding="utf-8") as fh:
        for p in todo:
            fh.write(json.dumps({"id": p.prompt_id, "messages": p.messages}, ensure_ascii=False) + "\n")
    gen = ev.params.get("generation") or {}
    spec = {
        "base_model": system.base_model,
        "models_dir": str(_models_dir()),
        "adapter_dir": system.artifacts_dir if system.kind == "run" else None,
        "prompts_path": str(prompts_path),
        "output_dir": str(out),
        "max_new_tokens": int(gen.get("max_new_tokens", 256)),
        "greedy": bool(gen.get("greedy", True)),
        "temperature": float(gen.get("temperature", 0.7)),
        "top_p": float(gen.get("top_p", 0.9)),
        "seed": int(gen.get("seed", 0)),
        "batch_size": int(gen.get("batch_size", 32)),
        "val_path": str(val_path) if val_path is not None else None,
    }
    wanted = {p.prompt_id for p in todo}
    offset = 0

    def poll() -> None:
        nonlocal offset
        offset, stored = _ingest(ctx, ev, system, out / ANSWERS_FILE, offset, wanted)
        progress.done += stored
        answers = progress.counters["answers"]
        answers[system.name] = answers.get(system.name, 0) + stored
        progress.report()

    run_answer_process(out, spec, poll, what=f"generator for {system.name!r}")
    if wanted:
        raise RuntimeError(f"generator for {system.name!r} ended without answering {len(wanted)} prompts")
    return _read_json(metrics_file) if val_path is not None else None


def run_answer_process(
    out: Path, spec: dict[str, Any], poll: Callable[[], None], *, what: str = "the generator"
) -> None:
    """Run the evaluation generator (``python -m trainer.answer``) on `spec` in `out`, calling `poll` every
    POLL_S while it runs and once after it ends: `poll` stores what it appended and reports progress, and
    raising JobCancelled there asks the generator to stop (its cancel file; killed after CANCEL_GRACE_S).
    What it answered before a cancel is kept. Raises JobCancelled after a cancel and RuntimeError, naming
    `what`, when the generator failed. The one launcher of evaluations and the respond_local job."""
    spec_path = out / ANSWER_SPEC_FILE
    spec_path.write_text(json.dumps(spec, indent=2))
    (out / CANCEL_FILE).unlink(missing_ok=True)
    log = (out / ANSWER_LOG).open("ab")
    # Its own process group: a cancel or a crash of the generator frees the GPU with it.
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainer.answer", str(spec_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    (out / PID_FILE).write_text(str(proc.pid))
    cancel_sent_at: float | None = None

    def poll_once() -> None:
        nonlocal cancel_sent_at
        try:
            poll()
        except JobCancelled:
            if cancel_sent_at is None:
                (out / CANCEL_FILE).touch()
                cancel_sent_at = time.time()

    try:
        while proc.poll() is None:
            time.sleep(POLL_S)
            poll_once()
            if cancel_sent_at is not None and time.time() - cancel_sent_at > CANCEL_GRACE_S:
                os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    poll_once()  # what was answered after the last poll (or before a cancel) is kept
    if cancel_sent_at is not None or proc.returncode == EXIT_CANCELLED:
        raise JobCancelled()
    if proc.returncode != EXIT_OK:
        status = _read_json(out / STATUS_FILE) or {}
        tail = (out / ANSWER_LOG).read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{what} exited with {proc.returncode}: {status.get('error') or tail}")


def stop_previous(out: Path, *, wait_s: float = 10.0) -> bool:
    """Kill a generator a killed worker left running in `out` (its own session outlives the worker), so a
    redelivered job on the same machine never runs two on one GPU or rewrites the files it reads. Only a
    live process whose command line names trainer.answer and this folder is touched. True if one was."""
    try:
        pid = int((out / PID_FILE).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, ValueError):
        return False
    if "trainer.answer" not in cmdline or str(out) not in cmdline:
        return False  # the pid was reused by another process
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + wait_s
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _teacher(name: str, concurrency: int | None) -> TeacherConfig:
    from app.generation.jobs import get_teacher
    from app.generation.schemas import TeacherChoice

    return get_teacher(TeacherChoice(teacher=name, concurrency=concurrency))


def _with_gateway(teacher: TeacherConfig, log: CallLog, budget: float | None, work: Any) -> Any:
    """Run `work(gateway)` on a gateway with the database cache and the job's ledger; a teacher that stays
    down pauses the job (resume it when it is back) instead of failing it."""

    async def go() -> Any:
        async with Gateway(teacher, cache=log.response_cache, on_call=log, budget_usd=budget) as gateway:
            return await work(gateway)

    try:
        return run_coroutine(go())
    except BudgetExceeded as exc:  # a teacher system's answers; judging stops on a budget by itself
        log.flush()
        raise JobPaused(
            f"paused: the budget is spent ({exc}); resuming continues from what is stored"
        ) from exc
    except TeacherUnavailable as exc:
        log.flush()
        raise JobPaused(
            f"paused: teacher {teacher.name!r} is unavailable ({exc}); resume when it is back"
        ) from exc


def _generate_teacher(
    ctx: JobContext, ev: EvalInfo, system: SystemInfo, todo: list[SetPrompt], progress: Progress
) -> None:
    """Answers from a teacher endpoint, through the gateway (cache, costs, budget), stored batch by batch."""
    import asyncio

    assert system.teacher is not None
    gen = ev.params.get("generation") or {}
    sampling = Sampling(
        temperature=0.0 if gen.get("greedy", True) else float(gen.get("temperature", 0.7)),
        top_p=None if gen.get("greedy", True) else float(gen.get("top_p", 0.9)),
        max_tokens=int(gen.get("max_new_tokens", 256)),
    )
    teacher = _teacher(system.teacher, ev.params.get("concurrency"))
    window = max(1, teacher.max_concurrency)

    async def work(gateway: Gateway) -> None:
        for start in range(0, len(todo), window):
            if ctx.cancelled:
                raise JobCancelled()
            batch = todo[start : start + window]
            done = await asyncio.gather(
                *(gateway.complete(p.messages, purpose="eval_answer", sampling=sampling) for p in batch)
            )
            rows = [(p.prompt_id, c.text, c.tokens_out or None) for p, c in zip(batch, done, strict=True)]
            await asyncio.to_thread(_store_answers, ctx, ev, system, rows)
            progress.done += len(rows)
            progress.counters["answers"][system.name] = progress.counters["answers"].get(
                system.name, 0
            ) + len(rows)
            await asyncio.to_thread(progress.report)

    _with_gateway(teacher, progress.log, ev.params.get("budget_usd"), work)


# --------------------------------------------------------------------------------------------------
# Stage 2: judging


def _verdict_key(kind: str, v: pw.PairVerdict | pw.ScoreVerdict) -> str:
    if isinstance(v, pw.PairVerdict):
        return json.dumps([v.prompt_id, v.system_a, v.system_b], ensure_ascii=False)
    return json.dumps([v.prompt_id, v.system], ensure_ascii=False)


def _store_verdicts(ctx: JobContext, evaluation_id: int, kind: str, verdicts: Sequence[Any]) -> None:
    """One row per comparison: a verdict judged again (after a teacher error) replaces the stored one."""
    if not verdicts:
        return
    by_key = {_verdict_key(kind, v): v.model_dump(mode="json") for v in verdicts}
    with ctx.session() as db:
        existing = {
            row.key: row
            for row in db.scalars(
                select(EvaluationVerdict).where(
                    EvaluationVerdict.evaluation_id == evaluation_id,
                    EvaluationVerdict.kind == kind,
                    EvaluationVerdict.key.in_(list(by_key)),
                )
            )
        }
        for key, data in by_key.items():
            if key in existing:
                existing[key].verdict = data
            else:
                db.add(EvaluationVerdict(evaluation_id=evaluation_id, kind=kind, key=key, verdict=data))


def _stored_verdicts(ctx: JobContext, evaluation_id: int, kind: str) -> list[dict[str, Any]]:
    with ctx.session() as db:
        return list(
            db.scalars(
                select(EvaluationVerdict.verdict)
                .where(EvaluationVerdict.evaluation_id == evaluation_id, EvaluationVerdict.kind == kind)
                .order_by(EvaluationVerdict.id)
            )
        )


def eval_prompts(ctx: JobContext, ev: EvalInfo, prompts: Sequence[SetPrompt]) -> list[pw.EvalPrompt]:
    """The prompts with every system's stored answer, as app.pipeline.pairwise takes them."""
    names = {s.id: s.name for s in ev.systems}
    answers: dict[str, dict[str, str]] = {}
    with ctx.session() as db:
        for system_id, prompt_id, answer in db.execute(
            select(EvaluationAnswer.system_id, EvaluationAnswer.prompt_id, EvaluationAnswer.answer).where(
                EvaluationAnswer.evaluation_id == ev.id
            )
        ):
            answers.setdefault(prompt_id, {})[names[system_id]] = answer
    return [
        pw.EvalPrompt(
            id=p.prompt_id,
            text=p.text,
            category=p.category,
            reference=p.reference,
            answers=answers.get(p.prompt_id, {}),
        )
        for p in prompts
    ]


def _judging_params(params: dict[str, Any]) -> dict[str, Any]:
    concurrency = params.get("concurrency")
    return {
        "rubric": params.get("rubric"),
        "language": params.get("language") or "en",
        "use_reference": bool(params.get("use_reference", True)),
        "sampling": Sampling(temperature=0.0, max_tokens=int(params.get("judge_max_tokens", 512))),
        **({"batch_size": int(concurrency)} if concurrency else {}),
    }


def _judge(ctx: JobContext, ev: EvalInfo, prompts: list[pw.EvalPrompt], progress: Progress) -> dict[str, Any]:
    teacher = _teacher(ev.judge, ev.params.get("concurrency"))
    names = [s.name for s in ev.systems]
    pairs = pw.all_pairs(names)
    jp = _judging_params(ev.params)
    pair_params = pw.PairwiseParams(**jp)
    done_pairs = [pw.PairVerdict.model_validate(v) for v in _stored_verdicts(ctx, ev.id, "pair")]
    progress.counters["stage"] = "judging"

    def emit_pairs(batch: list[pw.PairVerdict]) -> None:
        _store_verdicts(ctx, ev.id, "pair", batch)
        progress.done += len(batch)
        progress.counters["judged"] += len(batch)
        progress.report()

    async def judge_all(gateway: Gateway) -> dict[str, Any]:
        import asyncio

        summaries: dict[str, Any] = {}
        run = await pw.run_pairwise(
            gateway=gateway,
            prompts=prompts,
            pairs=pairs,
            params=pair_params,
            emit=emit_pairs,
            done=done_pairs,
            should_stop=lambda: ctx.cancelled,
        )
        summaries["pairwise"] = run.model_dump(mode="json")
        if ev.params.get("scores") and run.stop_reason == "done":
            done_scores = [
                pw.ScoreVerdict.model_validate(v)
                for v in await asyncio.to_thread(_stored_verdicts, ctx, ev.id, "score")
            ]

            def emit_scores(batch: list[pw.ScoreVerdict]) -> None:
                _store_verdicts(ctx, ev.id, "score", batch)
                progress.done += len(batch)
                progress.counters["scored"] += len(batch)
                progress.report()

            scored = await pw.run_scoring(
                gateway=gateway,
                prompts=prompts,
                systems=names,
                params=pw.ScoreParams(**jp),
                emit=emit_scores,
                done=done_scores,
                should_stop=lambda: ctx.cancelled,
            )
            summaries["scores"] = scored.model_dump(mode="json")
        return summaries

    return dict(_with_gateway(teacher, progress.log, ev.params.get("budget_usd"), judge_all))


# --------------------------------------------------------------------------------------------------
# Stage 3: results


def decontamination(ctx: JobContext, ev: EvalInfo, prompts: Sequence[SetPrompt]) -> dict[str, Any]:
    """For each trained system: the eval prompts with a near copy in its training snapshot, with the copies."""
    from app.curation.decontam import EvalSet
    from app.curation.jobs import text_of
    from app.snapshots.service import iter_contents

    ngram = int(ev.params.get("decontam_ngram", 13))
    threshold = float(ev.params.get("decontam_threshold", 0.8))
    out: list[dict[str, Any]] = []
    seen: set[int] = set()
    for system in ev.systems:
        if system.kind != "run" or system.snapshot_id is None or system.snapshot_id in seen:
            continue
        seen.add(system.snapshot_id)
        evals = EvalSet(ngram=ngram, threshold=threshold, ngram_cjk=16)
        # One entry per distinct text: EvalSet names the first prompt holding an n-gram, and a set with the
        # same prompt twice must count both as leaked.
        same_text: dict[str, list[str]] = {}
        for p in prompts:
            if p.text not in same_text:
                evals.add(p.prompt_id, p.text)
            same_text.setdefault(p.text, []).append(p.prompt_id)
        ids_of = {ids[0]: ids for ids in same_text.values()}
        leaks: dict[str, dict[str, Any]] = {}
        scanned = copies = 0
        with ctx.session() as db:
            for content in iter_contents(db, system.snapshot_id):
                scanned += 1
                text = text_of(
                    "instruction_input", content["instruction"], content["input"], content["messages"]
                )
                hit = evals.match(text)
                if hit is None:
                    continue
                copies += 1
                leak = leaks.setdefault(
                    hit["eval"],
                    {
                        "prompt_id": hit["eval"],
                        "prompt_ids": ids_of[hit["eval"]],
                        "prompt": hit["eval_prompt"],
                        "copies": [],
                    },
                )
                leak["copies"].append(
                    {
                        "record_id": content["record_id"],
                        "text": text[:300],
                        **{k: v for k, v in hit.items() if k in ("method", "score", "shared")},
                    }
                )
        systems = [s.name for s in ev.systems if s.snapshot_id == system.snapshot_id]
        out.append(
            {
                "snapshot_id": system.snapshot_id,
                "systems": systems,
                "records_scanned": scanned,
                "copies": copies,
                "prompts_leaked": sum(len(leak["prompt_ids"]) for leak in leaks.values()),
                "leaked_prompt_ids": sorted({pid for leak in leaks.values() for pid in leak["prompt_ids"]}),
                "leaks": list(leaks.values())[:MAX_LEAKS_LISTED],
            }
        )
    return {"ngram": ngram, "threshold": threshold, "snapshots": out}


def _results(
    ev: EvalInfo,
    prompts: list[pw.EvalPrompt],
    ctx: JobContext,
    runs: dict[str, Any],
    validation: dict[str, Any],
    contamination: dict[str, Any],
) -> dict[str, Any]:
    pair_verdicts = [pw.PairVerdict.model_validate(v) for v in _stored_verdicts(ctx, ev.id, "pair")]
    results: dict[str, Any] = {
        "systems": [s.name for s in ev.systems],
        "prompts": len(prompts),
        "pairwise": pw.summarise_pairwise(prompts, pair_verdicts).model_dump(mode="json"),
        "judging": runs,
        "validation": validation,
        "decontamination": contamination,
    }
    leaked = {
        pid for snap in contamination["snapshots"] for leak in snap["leaks"] for pid in leak["prompt_ids"]
    }
    if leaked:
        # The same figures without the prompts a trained system may have seen: a win that vanishes here
        # was a leak.
        clean = [p for p in prompts if p.id not in leaked]
        kept = [v for v in pair_verdicts if v.prompt_id not in leaked]
        results["pairwise_without_leaked"] = pw.summarise_pairwise(clean, kept).model_dump(mode="json")
    if ev.params.get("scores"):
        scores = [pw.ScoreVerdict.model_validate(v) for v in _stored_verdicts(ctx, ev.id, "score")]
        results["scores"] = [s.model_dump(mode="json") for s in pw.summarise_scores(scores)]
    return results


def _wait_for_runs(ctx: JobContext, evaluation_id: int) -> None:
    """An ablation's evaluation: fail naming a run that failed or was cancelled; pause (freeing the worker)
    while one still trains: the end of its `train` job queues this one again (app/evaluation/ablations.py)."""
    from app.evaluation.ablations import check_runs

    with ctx.session() as db:
        ev = db.get(Evaluation, evaluation_id)
        waiting = check_runs(db, ev) if ev is not None else None
    if waiting:
        raise JobPaused(waiting)


def run_evaluation_job(ctx: JobContext) -> None:
    p = EvaluationJobParams.model_validate(ctx.params)
    _wait_for_runs(ctx, p.evaluation_id)
    _freeze_prompts(ctx, p.evaluation_id)
    ev, prompts = _load(ctx, p.evaluation_id)
    log = CallLog(ctx.job_id)
    n_comparisons = len(prompts) * len(pw.all_pairs([s.name for s in ev.systems]))
    n_scores = len(prompts) * len(ev.systems) if ev.params.get("scores") else 0
    progress = Progress(ctx, log, len(prompts) * len(ev.systems) + n_comparisons + n_scores)
    validation: dict[str, Any] = {}
    for system in ev.systems:
        answered = _answered(ctx, system.id)
        progress.done += len(answered)
        progress.counters["answers"][system.name] = len(answered)
        todo = [q for q in prompts if q.prompt_id not in answered]
        progress.report()
        if system.kind == "teacher":
            if todo:
                _generate_teacher(ctx, ev, system, todo, progress)
            continue
        metrics = _generate_local(ctx, ev, system, todo, progress)
        if metrics is not None:
            validation[system.name] = {**metrics, "training_run_id": system.run_id}
    judged = eval_prompts(ctx, ev, prompts)
    progress.done = len(prompts) * len(ev.systems)
    progress.done += len(_stored_verdicts(ctx, ev.id, "pair"))
    runs = _judge(ctx, ev, judged, progress)
    if ctx.cancelled:
        raise JobCancelled()
    progress.counters["stage"] = "results"
    progress.report()
    contamination = decontamination(ctx, ev, prompts)
    results = _results(ev, judged, ctx, runs, validation, contamination)
    with ctx.session() as db:
        row = db.get(Evaluation, ev.id)
        assert row is not None
        row.results = results
    usage = log.flush()
    stop = runs.get("pairwise", {}).get("stop_reason")
    ctx.set_result({"stop_reason": stop, "prompts": len(prompts), **usage})
    if stop == "budget":
        raise JobPaused(
            f"paused: the budget is spent ({runs['pairwise'].get('message')}); the results so far are stored"
        )
    progress.done = progress.total
    progress.counters["stage"] = "done"
    progress.report()
