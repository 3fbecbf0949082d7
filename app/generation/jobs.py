"""Generation jobs: Self-Instruct, Evol-Instruct and the LLM judge, run on the default queue.

Resumable by construction: the pipelines are deterministic given the teacher's answers, every answer is
in the database cache, and records are written with stable keys. A redelivered job replays the finished
rounds from the cache (no paid call repeated) and writes nothing twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import and_, bindparam, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from app.config import get_settings
from app.datasets.models import Dataset
from app.errors import Invalid, NotFound
from app.generation.cache import CallLog
from app.generation.schemas import SelfInstructJobParams, TeacherChoice
from app.pipeline.llm import Gateway, TeacherConfig, TeacherUnavailable, load_teachers, run_coroutine
from app.records.models import Record

T = TypeVar("T")


def teachers() -> dict[str, TeacherConfig]:
    try:
        return load_teachers(get_settings().teachers)
    except ValueError as exc:
        raise Invalid(f"IF_TEACHERS is invalid: {exc}") from exc


def get_teacher(choice: TeacherChoice) -> TeacherConfig:
    known = teachers()
    teacher = known.get(choice.teacher)
    if teacher is None:
        names = ", ".join(sorted(known)) or "none configured (set IF_TEACHERS)"
        raise Invalid(f"unknown teacher {choice.teacher!r}; known: {names}", field="params.teacher")
    if choice.concurrency:
        teacher = teacher.model_copy(update={"max_concurrency": choice.concurrency})
    return teacher


def validate_teacher(params: dict[str, Any]) -> None:
    """Job-creation hook: refuse an unknown teacher before anything is queued."""
    get_teacher(
        TeacherChoice.model_validate({k: params.get(k) for k in ("teacher", "concurrency", "budget_usd")})
    )


def run_with_gateway(
    ctx: Any,
    teacher: TeacherConfig,
    log: CallLog,
    budget_usd: float | None,
    pipeline: Callable[[Gateway], Awaitable[T]],
) -> T:
    """Run one pipeline on a fresh gateway (DB cache, call log, budget); a teacher that stays down
    pauses the job with the reason instead of failing it."""
    from workers.runner import JobPaused

    async def go() -> T:
        async with Gateway(teacher, cache=log.response_cache, on_call=log, budget_usd=budget_usd) as gateway:
            return await pipeline(gateway)

    try:
        return run_coroutine(go())
    except TeacherUnavailable as exc:
        log.flush()
        raise JobPaused(
            f"paused: the teacher is unavailable ({exc}); resume the job when it is back"
        ) from exc


def _insert_ignore(db: Any) -> Any:
    return pg_insert if db.get_bind().dialect.name == "postgresql" else sqlite_insert


def upsert_generated(ctx: Any, records: Sequence[Any], *, dataset_id: int, key_prefix: str) -> None:
    """Write generated records by stable key; a replayed round finds its keys and writes nothing new."""
    if not records:
        return
    with ctx.session() as db:
        parents = {r.parent_key for r in records if r.parent_key}
        parent_ids: dict[str, int] = {}
        if parents:
            rows = db.execute(
                select(Record.gen_key, Record.id).where(
                    Record.dataset_id == dataset_id,
                    or_(
                        Record.gen_key.in_([f"{key_prefix}:{p}" for p in parents]),
                        Record.gen_key.in_(list(parents)),
                    ),
                )
            ).all()
            for gen_key, rid in rows:
                parent_ids[gen_key.removeprefix(f"{key_prefix}:")] = rid
        # Evolution starts from existing records, named "rec:<id>".
        parent_ids.update({p: int(p.removeprefix("rec:")) for p in parents if p.startswith("rec:")})
        values = []
        for r in records:
            meta = dict(r.metadata or {})
            if r.detail:
                meta["reason_detail"] = r.detail
            # The generation-time decision stays in meta when later curation changes the status.
            meta.update(
                {
                    "round": r.round,
                    "generation": r.status,
                    **({"operation": r.operation} if r.operation else {}),
                }
            )
            values.append(
                {
                    "dataset_id": dataset_id,
                    "instruction": r.instruction,
                    "input": r.input,
                    "output": r.output,
                    "status": "pending" if r.status == "kept" else "filtered",
                    "reason": None if r.status == "kept" else (r.reason or "rejected"),
                    "source": r.source,
                    "teacher_model": r.teacher_model,
                    "prompt_hash": r.prompt_hash,
                    "gen_key": f"{key_prefix}:{r.key}",
                    "job_id": ctx.job_id,
                    "is_classification": r.is_classification,
                    "label": r.label,
                    "parent_id": parent_ids.get(r.parent_key) if r.parent_key else None,
                    "meta": meta,
                    "tags": [],
                    "version": 1,
                    "flagged": False,
                }
            )
        stmt = _insert_ignore(db)(Record).on_conflict_do_nothing(index_elements=["dataset_id", "gen_key"])
        db.execute(stmt, values)


def load_seeds(ctx: Any, dataset_id: int) -> tuple[list[Any], list[str], str]:
    """Seed tasks: records with source 'seed'; accepted records join the pool the dedup compares to."""
    from app.pipeline.self_instruct import SeedTask

    with ctx.session() as db:
        dataset = db.get(Dataset, dataset_id)
        if dataset is None:
            raise NotFound(f"dataset {dataset_id} not found")
        seeds = db.execute(
            select(Record.id, Record.instruction, Record.input, Record.output, Record.is_classification)
            .where(
                Record.dataset_id == dataset_id,
                Record.source == "seed",
                Record.status.in_(["pending", "accepted"]),
            )
            .order_by(Record.id)
        ).all()
        extra = db.scalars(
            select(Record.instruction).where(
                Record.dataset_id == dataset_id, Record.status == "accepted", Record.source != "seed"
            )
        ).all()
        language = dataset.language
    tasks = [
        SeedTask(instruction=i, instances=((inp, out),), is_classification=bool(c), key=f"rec:{rid}")
        for rid, i, inp, out, c in seeds
    ]
    if not tasks:
        raise Invalid("the dataset has no seed tasks: import Self-Instruct seed tasks first (source 'seed')")
    return tasks, list(extra), language


def _report(ctx: Any, log: CallLog, progress: Any, done: int, total: int | None) -> None:
    counters = {
        "round": progress.round,
        "kept_tasks": progress.kept,
        "records_kept": progress.records_kept,
        "records_rejected": progress.records_rejected,
        "rejected_by_reason": progress.rejected_by_reason,
    }
    ctx.progress(done, total, counters=counters, usage=log.flush())


def run_self_instruct_job(ctx: Any) -> None:
    from app.pipeline.llm import Sampling
    from app.pipeline.self_instruct import SelfInstructParams, run_self_instruct
    from workers.runner import JobCancelled

    p = SelfInstructJobParams.model_validate(ctx.params)
    teacher = get_teacher(p)
    seeds, extra, language = load_seeds(ctx, ctx.dataset_id)
    params = SelfInstructParams(
        target=p.target,
        batch_size=p.batch_size,
        num_human=p.num_human,
        num_machine=p.num_machine,
        threshold=p.threshold,
        max_instances_per_task=p.max_instances_per_task,
        language="zh" if language.startswith("zh") else "en",
        sampling=Sampling(temperature=p.temperature, top_p=p.top_p, max_tokens=p.max_tokens),
        seed=p.seed,
    )
    log = CallLog(ctx.job_id)
    key_prefix = f"si{ctx.job_id}"

    def emit(event: Any) -> None:
        upsert_generated(ctx, event.records, dataset_id=ctx.dataset_id, key_prefix=key_prefix)
        _report(ctx, log, event.progress, event.progress.kept, p.target)

    result = run_with_gateway(
        ctx,
        teacher,
        log,
        p.budget_usd,
        lambda gateway: run_self_instruct(
            gateway=gateway,
            seeds=seeds,
            params=params,
            emit=emit,
            should_stop=lambda: ctx.cancelled,
            pool_extra=extra,
        ),
    )
    usage = log.flush()
    ctx.set_result(
        {
            "stop_reason": result.stop_reason,
            "message": result.message,
            "kept_tasks": result.kept_tasks,
            "records_kept": result.records_kept,
            "records_rejected": result.records_rejected,
            "rejected_by_reason": result.rejected_by_reason,
            "rounds": result.rounds,
            **usage,
        }
    )
    if result.stop_reason == "stopped" and ctx.cancelled:
        raise JobCancelled()


def scope_rows(ctx: Any, dataset_id: int, scope: Any, limit: int | None) -> list[Any]:
    from app.records.service import filter_clauses

    with ctx.session() as db:
        query = select(Record).where(and_(*filter_clauses(dataset_id, scope))).order_by(Record.id)
        if limit:
            query = query.limit(limit)
        rows = db.scalars(query).all()
        for r in rows:
            db.expunge(r)
        return list(rows)


_UPDATE_JUDGE = (
    update(Record)
    .where(Record.id == bindparam("rid"))
    .values(
        judge_score=bindparam("score"),
        meta=bindparam("new_meta"),
        status=bindparam("new_status"),
        reason=bindparam("new_reason"),
    )
)


def _language(ctx: Any) -> str:
    with ctx.session() as db:
        dataset = db.get(Dataset, ctx.dataset_id)
        if dataset is None:
            raise NotFound(f"dataset {ctx.dataset_id} not found")
        return "zh" if dataset.language.startswith("zh") else "en"


def run_evol_job(ctx: Any) -> None:
    from app.generation.schemas import EvolJobParams
    from app.pipeline.evol import EvolItem, EvolParams, run_evol
    from workers.runner import JobCancelled

    p = EvolJobParams.model_validate(ctx.params)
    teacher = get_teacher(p)
    language = _language(ctx)
    rows = scope_rows(ctx, ctx.dataset_id, p.scope, p.max_items)
    items = [
        EvolItem(key=f"rec:{r.id}", instruction=r.instruction, input=r.input, output=r.output)
        for r in rows
        if r.instruction
    ]
    if not items:
        raise Invalid("no records in the scope to evolve")
    params = EvolParams.model_validate({**p.extra, "rounds": p.rounds, "language": language, "seed": p.seed})
    log = CallLog(ctx.job_id)
    key_prefix = f"ev{ctx.job_id}"
    total = len(items) * p.rounds

    def emit(event: Any) -> None:
        upsert_generated(ctx, event.records, dataset_id=ctx.dataset_id, key_prefix=key_prefix)
        done = event.progress.records_kept + event.progress.records_rejected
        _report(ctx, log, event.progress, done, total)

    result = run_with_gateway(
        ctx,
        teacher,
        log,
        p.budget_usd,
        lambda gateway: run_evol(
            gateway=gateway, items=items, params=params, emit=emit, should_stop=lambda: ctx.cancelled
        ),
    )
    usage = log.flush()
    ctx.set_result(
        {
            "stop_reason": result.stop_reason,
            "message": result.message,
            "records_kept": result.kept,
            "records_rejected": result.rejected,
            "rejected_by_reason": result.rejected_by_reason,
            "rounds": result.rounds,
            "items": len(items),
            **usage,
        }
    )
    if result.stop_reason == "stopped" and ctx.cancelled:
        raise JobCancelled()


def run_judge_job(ctx: Any) -> None:
    from app.generation.schemas import JudgeJobParams
    from app.pipeline.judge import JudgeItem, JudgeParams, run_judge
    from workers.runner import JobCancelled

    p = JudgeJobParams.model_validate(ctx.params)
    teacher = get_teacher(p)
    language = _language(ctx)
    rows = scope_rows(ctx, ctx.dataset_id, p.scope, p.max_items)
    metas = {r.id: dict(r.meta or {}) for r in rows}
    statuses = {r.id: (r.status, r.reason) for r in rows}
    items = []
    for r in rows:
        instruction, output = r.instruction, r.output
        if r.messages and not instruction:
            instruction = next((m["content"] for m in r.messages if m.get("role") == "user"), "")
            output = next((m["content"] for m in reversed(r.messages) if m.get("role") == "assistant"), "")
        items.append(JudgeItem(key=f"rec:{r.id}", instruction=instruction, input=r.input, output=output))
    params = JudgeParams(rubric=p.rubric, threshold=p.threshold, language=language)
    log = CallLog(ctx.job_id)
    counters: dict[str, Any] = {"scored": 0, "kept": 0, "below_threshold": 0, "unscored": 0}
    ctx.progress(0, len(items), counters=counters)

    def emit(results: list[Any]) -> None:
        updates = []
        for res in results:
            rid = int(res.key.removeprefix("rec:"))
            meta = metas[rid]
            meta["judge"] = {
                "score": res.score,
                "rationale": res.rationale,
                "status": res.status,
                "threshold": p.threshold,
                "attempts": res.attempts,
                "model": teacher.model,
            }
            status, reason = statuses[rid]
            if p.apply and res.status == "rejected":
                status, reason = "filtered", "judge_below"
                counters["below_threshold"] += 1
            elif res.status == "unscored":
                counters["unscored"] += 1
            else:
                counters["kept"] += 1
            counters["scored"] += res.score is not None
            updates.append(
                {"rid": rid, "score": res.score, "new_meta": meta, "new_status": status, "new_reason": reason}
            )
        with ctx.session() as db:
            db.connection().execute(_UPDATE_JUDGE.execution_options(synchronize_session=False), updates)
        done = counters["kept"] + counters["below_threshold"] + counters["unscored"]
        ctx.progress(done, len(items), counters=counters, usage=log.flush())

    summary = run_with_gateway(
        ctx,
        teacher,
        log,
        p.budget_usd,
        lambda gateway: run_judge(
            gateway=gateway, items=items, params=params, emit=emit, should_stop=lambda: ctx.cancelled
        ),
    )
    ctx.set_result(
        {
            "stop_reason": summary.stop_reason,
            "message": summary.message,
            "kept": summary.kept,
            "below_threshold": summary.rejected,
            "unscored": summary.unscored,
            "mean_score": summary.mean_score,
            **log.flush(),
        }
    )
    if summary.stop_reason == "stopped" and ctx.cancelled:
        raise JobCancelled()
