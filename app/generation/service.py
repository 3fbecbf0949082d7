"""Generation outside jobs: the teachers a user may see, and what a job will cost before it runs."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy import ColumnElement, and_, func, select
from sqlalchemy.orm import Session

from app.auth.models import Role, User
from app.datasets.models import Dataset
from app.datasets.service import prompt_language, require_dataset
from app.errors import DomainError, Invalid, invalid
from app.generation.cache import DbResponseCache
from app.generation.jobs import get_teacher, judge_item, self_instruct_params, teachers
from app.generation.schemas import EstimateRead, EstimateRequest, SelfInstructJobParams, TeacherRead
from app.pipeline.llm import (
    Gateway,
    Prompt,
    Sampling,
    TeacherConfig,
    TeacherError,
    estimate_cost,
    run_coroutine,
)
from app.records.models import Record
from app.records.schemas import RecordFilter

log = logging.getLogger(__name__)


class TeacherDidNotAnswer(DomainError):
    """An estimate needs real answers; like a database that is down, a teacher that is down is no fault of
    the request: nothing was started or stored, try again."""

    status_code = 503


def list_teachers(*, user: User) -> list[TeacherRead]:
    """The teachers of IF_TEACHERS; where one is served (`base_url`) only for admins, who configure them."""
    admin = user.role == Role.admin.value
    return [
        TeacherRead(
            name=t.name,
            model=t.model,
            base_url=t.base_url if admin else None,
            api=t.api,
            max_concurrency=t.max_concurrency,
            price_in_per_1k=t.price_in_per_1k,
            price_out_per_1k=t.price_out_per_1k,
            batch=t.batch,
            batch_price_in_per_1k=t.batch_prices[0] if t.batch else None,
            batch_price_out_per_1k=t.batch_prices[1] if t.batch else None,
        )
        for t in teachers().values()
    ]


def _seed_instructions(*, db: Session, dataset_id: int) -> list[str]:
    query = select(Record.instruction).where(Record.dataset_id == dataset_id, Record.source == "seed")
    return list(db.scalars(query.order_by(Record.id)))


@dataclass(frozen=True)
class DryRun:
    """What an estimate sends: the job's own first prompts, as the job will send them (same sampling and
    sample indices, hence the same cache keys), and how many calls the whole job makes."""

    teacher: TeacherConfig
    prompts: list[Prompt]
    purpose: str
    sampling: Sampling
    sample_indices: list[int]
    total_calls: int
    batched_calls: int | None = None
    """Of ``total_calls``, those a batch-mode job sends through the Batch API (None: all of them)."""


M = TypeVar("M", bound=BaseModel)


def _params(model: type[M], params: dict[str, Any]) -> M:
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        raise invalid(exc.errors(), prefix="params") from exc


def _self_instruct_run(db: Session, dataset: Dataset, request: EstimateRequest) -> DryRun:
    from app.pipeline.self_instruct import build_instruction_prompt

    p = _params(SelfInstructJobParams, request.params)
    teacher = get_teacher(p)
    human = _seed_instructions(db=db, dataset_id=dataset.id)
    if not human:
        raise Invalid("the dataset has no seed tasks to build prompts from")
    params = self_instruct_params(p, language=dataset.language)
    k = min(request.sample_prompts, p.batch_size)
    prompts: list[Prompt] = [
        build_instruction_prompt(
            human=human, machine=[], rng=random.Random(f"{p.seed}:0:{i}"), params=params
        )[0]
        for i in range(k)
    ]
    # Per kept task: its share of an instruction prompt (about 3 usable items each) plus the
    # classification and the instance calls.
    # In batch mode only the instances stage (those two calls a task) goes through the Batch API, for the
    # spare tasks too (sent with the others, paid whether used or not).
    tasks = p.target + (math.ceil(p.target * p.batch_spares) if p.batch else 0)
    total = math.ceil(p.target / 3) + 2 * tasks
    return DryRun(
        teacher, prompts, "self_instruct.instructions", params.sampling, list(range(k)), total, 2 * tasks
    )


def _in_scope(
    db: Session, dataset_id: int, scope: RecordFilter, limit: int | None, *extra: ColumnElement[bool]
) -> tuple[list[Record], int]:
    """The first records of a job's scope (its order: by id) and how many the job will take."""
    from app.records.service import filter_clauses

    where = and_(*filter_clauses(dataset_id, scope), *extra)
    count = int(db.scalar(select(func.count(Record.id)).where(where)) or 0)
    first = list(db.scalars(select(Record).where(where).order_by(Record.id).limit(10)))
    return first, min(count, limit) if limit else count


def _evol_run(db: Session, dataset: Dataset, request: EstimateRequest) -> DryRun:
    from app.generation.schemas import EvolJobParams
    from app.pipeline.evol import EvolParams, pick_operation
    from app.pipeline.prompts import render_prompt

    p = _params(EvolJobParams, request.params)
    teacher = get_teacher(p)
    first, n = _in_scope(db, dataset.id, p.scope, p.max_items, Record.instruction != "")
    if not n:
        raise Invalid("no records in the scope to evolve", field="params.scope")
    language = prompt_language(dataset.language)
    params = _params(EvolParams, {**p.extra, "rounds": p.rounds, "language": language, "seed": p.seed})
    if not params.operations:
        raise Invalid("Evol-Instruct needs at least one operation", field="params.extra.operations")
    prompts: list[Prompt] = []
    for r in first[: request.sample_prompts]:
        # The first round's rewrite of each record, as app.pipeline.evol sends it.
        op = pick_operation(params, 0, f"rec:{r.id}")
        text = f"{r.instruction.strip()}\n{r.input.strip()}".strip()
        prompts.append(render_prompt(f"evol_{op}", language, instruction=text))
    # Per record and round: the rewrite, the equality check and the answer.
    total = 3 * n * p.rounds
    return DryRun(teacher, prompts, "evol.estimate", params.sampling, [0] * len(prompts), total)


def _judge_run(db: Session, dataset: Dataset, request: EstimateRequest) -> DryRun:
    from app.generation.schemas import JudgeJobParams
    from app.pipeline.judge import JudgeParams, judge_prompt

    p = _params(JudgeJobParams, request.params)
    teacher = get_teacher(p)
    first, n = _in_scope(db, dataset.id, p.scope, p.max_items)
    if not n:
        raise Invalid("no records in the scope to judge", field="params.scope")
    params = JudgeParams(rubric=p.rubric, threshold=p.threshold, language=prompt_language(dataset.language))
    prompts: list[Prompt] = [
        judge_prompt(judge_item(r), params=params) for r in first[: request.sample_prompts]
    ]
    # One call per record (an unparseable score costs a second: rare, not counted).
    return DryRun(teacher, prompts, "judge", params.sampling, [0] * len(prompts), n)


def _dry_run_of(kind: str, db: Session, dataset: Dataset, request: EstimateRequest) -> DryRun:
    """The plan of a kind whose job module holds it (imported late: those modules import this one)."""
    from importlib import import_module

    plan: DryRun = import_module(f"app.generation.{kind}").dry_run(db, dataset, request)
    return plan


def _backtranslate_run(db: Session, dataset: Dataset, request: EstimateRequest) -> DryRun:
    from app.generation.backtranslate import dry_run

    return dry_run(db, dataset, request)


DRY_RUNS: dict[str, Callable[[Session, Dataset, EstimateRequest], DryRun]] = {
    "self_instruct": _self_instruct_run,
    "evol": _evol_run,
    "judge": _judge_run,
    "backtranslate": _backtranslate_run,
    "rewrite": lambda db, dataset, request: _dry_run_of("rewrite", db, dataset, request),
    "reasoning": lambda db, dataset, request: _dry_run_of("reasoning", db, dataset, request),
    "respond": lambda db, dataset, request: _dry_run_of("respond", db, dataset, request),
    "rank_candidates": lambda db, dataset, request: _dry_run_of("rank", db, dataset, request),
}
# The job kinds POST /generation/estimate prices (their forms show an Estimate button).
ESTIMATED_KINDS = tuple(DRY_RUNS)


def batchable(kind: str) -> bool:
    """Whether jobs of this kind can run in batch mode (their parameters have ``batch``)."""
    from app.jobs.registry import KINDS

    spec = KINDS.get(kind)
    return spec is not None and "batch" in spec.params_cls().model_fields


def _partly_batched(est: dict[str, Any], run: DryRun) -> EstimateRead:
    """A job that batches only some of its calls (Self-Instruct: the instances stage): those at the batch
    prices, the rest (the instruction rounds) at the normal ones, from the same tokens per call."""
    pin, pout = run.teacher.batch_prices
    per_batched = (
        round(est["tokens_in_per_call"]) * pin / 1000 + round(est["tokens_out_per_call"]) * pout / 1000
    )
    batched = min(run.batched_calls or 0, run.total_calls)
    cost = est["cost_per_call_usd"] * (run.total_calls - batched) + per_batched * batched
    return EstimateRead(**{**est, "estimated_cost_usd": cost}, batch=True)


def estimate(*, db: Session, user: User, request: EstimateRequest) -> EstimateRead:
    """Dry-run a few of the job's own first prompts and extrapolate the cost of the whole job.

    The answers go into the response cache, so the job does not pay for them again."""
    dataset = require_dataset(db=db, user=user, dataset_id=request.dataset_id, min_role=Role.curator.value)
    plan = DRY_RUNS.get(request.kind)
    if plan is None:
        raise Invalid(f"estimates are available for {', '.join(DRY_RUNS)} jobs", field="kind")
    run = plan(db, dataset, request)
    batch = request.params.get("batch") is True and batchable(request.kind) and run.teacher.batch
    # A batch-mode job is priced at the teacher's batch prices; the sample calls themselves are synchronous
    # (answered now, at full price), and the job finds them in the cache.
    teacher = run.teacher.at_batch_prices() if batch and run.batched_calls is None else run.teacher

    async def go() -> EstimateRead:
        async with Gateway(teacher, cache=DbResponseCache()) as gateway:
            est = await estimate_cost(
                gateway=gateway,
                prompts=run.prompts,
                total_calls=run.total_calls,
                purpose=run.purpose,
                sampling=run.sampling,
                sample_indices=run.sample_indices,
            )
        if batch and run.batched_calls is not None:
            return _partly_batched(est.__dict__, run)
        return EstimateRead(**est.__dict__, batch=teacher is not run.teacher)

    try:
        return run_coroutine(go())
    except TeacherError as exc:
        # The gateway's message names where the teacher is served, which only admins may see.
        log.warning("estimate: teacher %r did not answer: %s", run.teacher.name, exc)
        raise TeacherDidNotAnswer(
            f"teacher {run.teacher.name!r} ({run.teacher.model}) did not answer, so nothing could be "
            "estimated; check that it is up (docs/teachers.md) and try again"
        ) from exc
