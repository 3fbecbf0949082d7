"""Batch mode for generation jobs: a job's pipeline answered through the teacher's Batch API.

The mechanism is app/pipeline/llm/batch.py; this is the job's side of it: the batch state lives in the
job's ``result["batch"]`` (saved before each step that could be lost, so a killed worker neither submits
twice nor loses a batch), answers go into the job's database cache and ledger, and between polls the job
gives its worker back (``JobWaiting``: it stays ``running``, and the reaper sends it again when it is time
to look). Any handler whose calls do not depend on each other, or only in rounds (the judge's re-asks,
backtranslation's score after its instruction), runs its pipeline through :func:`run_pipeline`, which
picks this path or the synchronous one by the job's ``batch`` parameter. A pipeline with calls that cannot
wait for a batch (Self-Instruct's instruction rounds, each built on the ones before) makes those through
:func:`live_gateway` on every pass: answered now, cached, and so the same on the next pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import openai
from sqlalchemy import select, update

from app.generation.cache import CallLog
from app.jobs.context import JobCancelled, JobContext, JobPaused, JobWaiting
from app.jobs.models import Job
from app.pipeline.llm import CallRecord, Gateway, TeacherConfig, TeacherUnavailable, run_coroutine
from app.pipeline.llm.batch import (
    BatchGateway,
    BatchRunner,
    BatchState,
    RememberingCache,
    Step,
    collect_missing,
)

T = TypeVar("T")
# The pipeline as the job runs it: `real` is False for the passes that only find the missing calls (they
# must write nothing), True for the final pass, whose every call the cache answers.
Pipeline = Callable[[Gateway, bool], Awaitable[T]]


def load_state(ctx: JobContext) -> BatchState:
    with ctx.session() as db:
        result = db.scalar(select(Job.result).where(Job.id == ctx.job_id)) or {}
    return BatchState.from_json(result.get("batch"))


def save_state(ctx: JobContext, state: BatchState) -> None:
    """Into the job's result, in its own transaction: what a restarted worker resumes from."""
    with ctx.session() as db:
        result = dict(db.scalar(select(Job.result).where(Job.id == ctx.job_id).with_for_update()) or {})
        result["batch"] = state.to_json()
        db.execute(update(Job).where(Job.id == ctx.job_id).values(result=result))


def batch_summary(state: BatchState) -> dict[str, Any]:
    """What the job's counters and result say about its batches."""
    open_ = state.open
    return {
        "batches": [s.batch_id for s in state.submissions if s.batch_id],
        "open": None if open_ is None else {"batch_id": open_.batch_id, "status": open_.provider_status},
        "answered": state.answered,
        "failing": len(state.failures),
        "cost_usd": round(state.cost_usd, 6),
    }


def run_in_batches(
    ctx: JobContext,
    teacher: TeacherConfig,
    log: CallLog,
    budget_usd: float | None,
    pipeline: Pipeline[T],
    *,
    report: Callable[[dict[str, Any]], None],
) -> T:
    """Advance the job's batches as far as they go on this visit; raise JobWaiting to be called again, or
    run the pipeline for real once every call it makes is answered (or has failed in too many batches).

    ``report`` gets :func:`batch_summary` after each step, for the job's progress.
    """
    state = load_state(ctx)
    spent = log.flush()["cost_usd"]
    cache = RememberingCache(log.response_cache)
    runner = BatchRunner(
        teacher,
        job_label=f"if-job{ctx.job_id}",
        cache=cache,
        save=lambda s: save_state(ctx, s),
        state=state,
        budget_left_usd=None if budget_usd is None else max(0.0, budget_usd - spent),
    )
    try:
        step = _advance(ctx, teacher, cache, runner, pipeline, report, log=log, budget_usd=budget_usd)
    except JobCancelled:
        _cancel_open(runner)
        raise
    except TeacherUnavailable as exc:
        raise _paused(log, exc) from exc
    finally:
        runner.close()

    async def final() -> T:
        async with BatchGateway(
            teacher, mode="final", failed=step.failed, cache=cache, on_call=log
        ) as gateway:
            return await pipeline(gateway, True)

    try:
        return run_coroutine(final())
    except TeacherUnavailable as exc:
        raise _paused(log, exc) from exc


def _paused(log: CallLog, exc: TeacherUnavailable) -> JobPaused:
    """A pipeline's live calls (Self-Instruct's instruction rounds) found the teacher down: pause, as the
    synchronous path does (app.generation.jobs.run_with_gateway)."""
    log.flush()
    return JobPaused(f"paused: the teacher is unavailable ({exc}); resume the job when it is back")


def live_gateway(teacher: TeacherConfig, log: CallLog, budget_usd: float | None, *, real: bool) -> Gateway:
    """A synchronous gateway on the job's cache for the calls of a batch-mode pipeline that cannot wait for
    a batch (Self-Instruct's instruction rounds: each round's prompts depend on the rounds before).

    Its answers are cached and in the ledger at the normal prices, so the next pass (and the next visit)
    gets them from the cache and screens the same. Its budget is what the ledger leaves. In the passes
    that only find the missing calls (``real`` False) only its failures are logged: a visit runs several
    passes, and a cache hit's ledger row per pass would only repeat itself."""
    spent = log.flush()["cost_usd"] if budget_usd is not None else 0.0

    def errors_only(call: CallRecord) -> None:
        if call.error is not None:
            log(call)

    return Gateway(
        teacher,
        cache=log.response_cache,
        on_call=log if real else errors_only,
        budget_usd=None if budget_usd is None else max(0.0, budget_usd - spent),
    )


def run_pipeline(
    ctx: JobContext,
    teacher: TeacherConfig,
    log: CallLog,
    budget_usd: float | None,
    pipeline: Pipeline[T],
    *,
    batch: bool,
    counters: dict[str, Any],
    total: int,
) -> T:
    """Run a job's pipeline synchronously, or in batch mode when ``batch``: the one switch the teacher
    jobs use. ``pipeline(gateway, real)`` must write nothing when ``real`` is False (the passes that only
    find the calls still missing); in batch mode the job's progress shows ``counters`` with the batches'
    summary under ``"batch"`` while it waits (0 of ``total`` done: nothing is written before the end),
    and ``counters["batch"]`` holds it once done (only after the pipeline's writes: a job's emit may sum
    its counters)."""
    if not batch:
        from app.generation.jobs import run_with_gateway

        return run_with_gateway(ctx, teacher, log, budget_usd, lambda gateway: pipeline(gateway, True))

    def report(summary: dict[str, Any]) -> None:
        ctx.progress(0, total, counters={**counters, "batch": summary}, usage=log.flush())

    result = run_in_batches(ctx, teacher, log, budget_usd, pipeline, report=report)
    # Done: the counters (and so the job's result) name the batches that answered it.
    counters["batch"] = batch_summary(load_state(ctx))
    return result


def run_items(
    ctx: JobContext,
    teacher: TeacherConfig,
    log: CallLog,
    budget_usd: float | None,
    run: Callable[..., Awaitable[T]],
    *,
    items: Any,
    params: Any,
    emit: Callable[[Any], None],
    batch: bool,
    counters: dict[str, Any],
    total: int,
) -> T:
    """:func:`run_pipeline` for the jobs whose pipeline is ``run(gateway=, items=, params=, emit=,
    should_stop=)`` (judge, backtranslation, rewrite, reasoning): the passes that only find the calls still
    missing emit nothing and never stop early; the final pass is the synchronous run on the same answers."""
    return run_pipeline(
        ctx,
        teacher,
        log,
        budget_usd,
        lambda gateway, real: run(
            gateway=gateway,
            items=items,
            params=params,
            emit=emit if real else _discard,
            should_stop=(lambda: ctx.cancelled) if real else _never,
        ),
        batch=batch,
        counters=counters,
        total=total,
    )


def _discard(results: Any) -> None:
    return None


def _never() -> bool:
    return False


def _advance(
    ctx: JobContext,
    teacher: TeacherConfig,
    cache: RememberingCache,
    runner: BatchRunner,
    pipeline: Pipeline[Any],
    report: Callable[[dict[str, Any]], None],
    *,
    log: CallLog,
    budget_usd: float | None,
) -> Step:
    while True:
        ctx.check_cancel()
        if budget_usd is not None:
            # The ledger, not this visit's running count: a pipeline's live calls (Self-Instruct's
            # instruction rounds) are paid during the passes too.
            runner.budget_left_usd = max(0.0, budget_usd - log.flush()["cost_usd"])
        missing = collect_missing(
            teacher, lambda g: pipeline(g, False), cache=cache, failed=runner.given_up()
        )
        try:
            step = runner.step(missing)
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            # The state is saved: looking again later resumes exactly here.
            raise JobWaiting(teacher.batch_poll_s, f"batch API unreachable ({exc}); trying again") from exc
        except openai.APIStatusError as exc:
            if exc.status_code in (408, 409, 429) or exc.status_code >= 500:
                raise JobWaiting(teacher.batch_poll_s, f"batch API busy ({exc.status_code})") from exc
            raise JobPaused(
                f"paused: the teacher's batch API refused a request ({exc.status_code}: {str(exc)[:300]}); "
                "resume the job when it is fixed"
            ) from exc
        report(batch_summary(runner.state))
        if step.action == "wait":
            raise JobWaiting(step.seconds, step.message)
        if step.action == "final":
            return step


def _cancel_open(runner: BatchRunner) -> None:
    """A cancelled job's open batches are cancelled at the provider too (best effort: they expire anyway)."""
    for open_ in runner.state.open_all:
        if open_.batch_id is not None:
            with contextlib.suppress(openai.OpenAIError):
                runner.client.batches.cancel(open_.batch_id)
