"""Generation jobs: Self-Instruct, Evol-Instruct and the LLM judge, run on the default queue.

Resumable by construction: the pipelines are deterministic given the teacher's answers, every answer is
in the database cache, and records are written with stable keys. A redelivered job replays the finished
rounds from the cache (no paid call repeated) and writes nothing twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import and_, bindparam, or_, select, update

from app.config import get_settings
from app.curation.verdicts import Verdict, apply_verdicts
from app.datasets.models import Dataset
from app.datasets.service import prompt_language
from app.errors import Invalid, NotFound
from app.generation.cache import CallLog
from app.generation.schemas import SelfInstructJobParams, TeacherChoice
from app.jobs.context import JobCancelled, JobContext, JobPaused
from app.pipeline.llm import Gateway, TeacherConfig, TeacherUnavailable, load_teachers, run_coroutine
from app.records.bulk import NewRecord, insert_new
from app.records.models import Record

if TYPE_CHECKING:
    from app.pipeline.judge import JudgeItem
    from app.pipeline.self_instruct import SelfInstructParams

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
    teacher = get_teacher(
        TeacherChoice.model_validate({k: params.get(k) for k in ("teacher", "concurrency", "budget_usd")})
    )
    if params.get("batch") and not teacher.batch:
        raise Invalid(
            f"teacher {teacher.name!r} does not offer a batch API (batch: false in IF_TEACHERS)",
            field="params.batch",
        )


def run_with_gateway(
    ctx: JobContext,
    teacher: TeacherConfig,
    log: CallLog,
    budget_usd: float | None,
    pipeline: Callable[[Gateway], Awaitable[T]],
) -> T:
    """Run one pipeline on a fresh gateway (DB cache, call log, budget); a teacher that stays down
    pauses the job with the reason instead of failing it."""

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


def upsert_generated(ctx: JobContext, records: Sequence[Any], *, dataset_id: int, key_prefix: str) -> int:
    """Write generated records by stable key; a replayed round finds its keys and writes nothing new.

    A record whose parent and content (instruction, input, output) the dataset already holds is not
    written again either: a second job on the same inputs, answered from the cache, adds no copies.
    The nearest neighbour the generation-time ROUGE-L check found is stored as `nn_record_id` and
    `nn_score`, as the dedup job stores it. Returns how many records were skipped as copies."""
    if not records:
        return 0
    with ctx.session() as db:
        parents = {r.parent_key for r in records if r.parent_key}
        key_ids = _ids_of_keys(db, dataset_id, key_prefix, parents)
        existing = _existing_content(db, dataset_id, records, key_ids, job_id=ctx.job_id)
        values: list[NewRecord] = []
        skipped = 0
        for r in records:
            parent_id = key_ids.get(r.parent_key) if r.parent_key else None
            if (parent_id, r.source, r.instruction, r.input, r.output) in existing:
                skipped += 1
                continue
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
                    "parent_id": parent_id,
                    "meta": meta,
                    "nn_score": meta.get("rouge_l"),
                }
            )
        if values:
            insert_new(db, values)
            _link_nearest(db, dataset_id, key_prefix, values)
        return skipped


# A Self-Instruct task's records are keyed by its instruction's key plus ":<instance>"; a neighbour found
# by the instruction's key is its task's first stored instance.
MAX_INSTANCE_KEYS = 32


def _ids_of_keys(
    db: Any, dataset_id: int, key_prefix: str, keys: set[str], *, instances: bool = False
) -> dict[str, int]:
    """Record ids of pipeline keys: "rec:<id>" names an existing record, others a record of this job
    (with `instances`, or else the first instance of the task that key names)."""
    ids = {k: int(k.removeprefix("rec:")) for k in keys if k.startswith("rec:") and k[4:].isdigit()}
    wanted = [k for k in keys if k not in ids]
    if not wanted:
        return ids
    names = {f"{key_prefix}:{k}": (k, -1) for k in wanted} | {k: (k, -1) for k in wanted}
    if instances:
        names |= {f"{key_prefix}:{k}:{n}": (k, n) for k in wanted for n in range(MAX_INSTANCE_KEYS)}
    found: dict[str, tuple[int, int]] = {}
    for gen_key, rid in db.execute(
        select(Record.gen_key, Record.id).where(
            Record.dataset_id == dataset_id, Record.gen_key.in_(list(names))
        )
    ):
        key, n = names[gen_key]
        if key not in found or n < found[key][0]:
            found[key] = (n, rid)
    ids.update({k: rid for k, (_, rid) in found.items()})
    return ids


def _existing_content(
    db: Any, dataset_id: int, records: Sequence[Any], key_ids: dict[str, int], *, job_id: int
) -> set[tuple[Any, ...]]:
    """(parent_id, source, instruction, input, output) of the dataset's records like these that earlier
    jobs wrote. This job's own records are not copies: a teacher may repeat itself within a job (each
    repeat is a record with its own decision), and a replay of this job is the insert's business."""
    instructions = list({r.instruction for r in records})
    parent_ids = {key_ids[r.parent_key] for r in records if r.parent_key in key_ids}
    sources = list({r.source for r in records})
    query = select(Record.parent_id, Record.source, Record.instruction, Record.input, Record.output).where(
        Record.dataset_id == dataset_id,
        Record.source.in_(sources),
        or_(Record.job_id.is_(None), Record.job_id != job_id),
    )
    if parent_ids and all(r.parent_key for r in records):
        query = query.where(Record.parent_id.in_(parent_ids))  # indexed: evolutions of these parents
    else:
        query = query.where(Record.instruction.in_(instructions))
    return {tuple(row) for row in db.execute(query)}


def _link_nearest(db: Any, dataset_id: int, key_prefix: str, values: Sequence[NewRecord]) -> None:
    """Point each new record at the record its generation-time nearest neighbour key names."""
    nearest = {str(v["meta"]["nearest"]) for v in values if v["meta"].get("nearest")}
    if not nearest:
        return
    ids = _ids_of_keys(db, dataset_id, key_prefix, nearest, instances=True)
    links = [
        {"k": v["gen_key"], "nn": ids[str(v["meta"]["nearest"])]}
        for v in values
        if v["meta"].get("nearest") and str(v["meta"]["nearest"]) in ids
    ]
    if links:
        db.connection().execute(
            update(Record)
            .where(Record.dataset_id == dataset_id, Record.gen_key == bindparam("k"))
            .values(nn_record_id=bindparam("nn"))
            .execution_options(synchronize_session=False),
            links,
        )


def load_seeds(ctx: JobContext, dataset_id: int) -> tuple[list[Any], list[tuple[str, str]], str]:
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
        extra = [
            (f"rec:{rid}", instruction)
            for rid, instruction in db.execute(
                select(Record.id, Record.instruction).where(
                    Record.dataset_id == dataset_id, Record.status == "accepted", Record.source != "seed"
                )
            )
        ]
        language = dataset.language
    tasks = [
        SeedTask(instruction=i, instances=((inp, out),), is_classification=bool(c), key=f"rec:{rid}")
        for rid, i, inp, out, c in seeds
    ]
    if not tasks:
        raise Invalid("the dataset has no seed tasks: import Self-Instruct seed tasks first (source 'seed')")
    return tasks, list(extra), language


def _report(ctx: JobContext, log: CallLog, progress: Any, done: int, total: int | None) -> None:
    counters = {
        "round": progress.round,
        "kept_tasks": progress.kept,
        "records_kept": progress.records_kept,
        "records_rejected": progress.records_rejected,
        "rejected_by_reason": progress.rejected_by_reason,
    }
    ctx.progress(done, total, counters=counters, usage=log.flush())


def self_instruct_params(p: SelfInstructJobParams, *, language: str) -> SelfInstructParams:
    """The pipeline's parameters for a self_instruct job (its cost estimate builds prompts with them too)."""
    from app.pipeline.llm import Sampling
    from app.pipeline.self_instruct import SelfInstructParams

    return SelfInstructParams(
        target=p.target,
        batch_size=p.batch_size,
        num_human=p.num_human,
        num_machine=p.num_machine,
        threshold=p.threshold,
        max_instances_per_task=p.max_instances_per_task,
        language=prompt_language(language),
        sampling=Sampling(temperature=p.temperature, top_p=p.top_p, max_tokens=p.max_tokens),
        seed=p.seed,
        batch_spares=p.batch_spares,
    )


def run_self_instruct_job(ctx: JobContext) -> None:
    from app.pipeline.self_instruct import run_self_instruct

    p = SelfInstructJobParams.model_validate(ctx.params)
    teacher = get_teacher(p)
    seeds, extra, language = load_seeds(ctx, ctx.dataset)
    params = self_instruct_params(p, language=language)
    log = CallLog(ctx.job_id)
    key_prefix = f"si{ctx.job_id}"

    copies = [0]

    def emit(event: Any) -> None:
        copies[0] += upsert_generated(ctx, event.records, dataset_id=ctx.dataset, key_prefix=key_prefix)
        _report(ctx, log, event.progress, event.progress.kept, p.target)

    counters: dict[str, Any] = {"kept_tasks": 0}
    if p.batch:
        result = _self_instruct_in_batches(ctx, p, teacher, log, seeds, extra, params, emit, counters)
    else:
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
            "surplus_tasks": result.surplus_tasks,
            "copies_skipped": copies[0],
            **({"batch": counters["batch"]} if "batch" in counters else {}),
            **usage,
        }
    )
    if result.stop_reason == "stopped" and ctx.cancelled:
        raise JobCancelled()


def _self_instruct_in_batches(
    ctx: JobContext,
    p: SelfInstructJobParams,
    teacher: TeacherConfig,
    log: CallLog,
    seeds: list[Any],
    extra: list[tuple[str, str]],
    params: SelfInstructParams,
    emit: Callable[[Any], None],
    counters: dict[str, Any],
) -> Any:
    """Batch mode (app/pipeline/self_instruct_batch.py): the instruction rounds answered live on the job's
    cache on every pass, the instances stage through the teacher's Batch API; only the final pass writes."""
    from app.generation.batch_mode import live_gateway, run_pipeline
    from app.pipeline.self_instruct_batch import run_self_instruct_batched

    refused: dict[str, str] = {}  # this visit's refused instruction calls: every pass screens the same

    async def pipeline(gateway: Gateway, real: bool) -> Any:
        async with live_gateway(teacher, log, p.budget_usd, real=real) as live:
            return await run_self_instruct_batched(
                gateway=gateway,
                live=live,
                seeds=seeds,
                params=params,
                emit=emit if real else lambda event: None,
                should_stop=(lambda: ctx.cancelled) if real else (lambda: False),
                pool_extra=extra,
                refused=refused,
            )

    return run_pipeline(
        ctx, teacher, log, p.budget_usd, pipeline, batch=True, counters=counters, total=p.target
    )


def scope_rows(ctx: JobContext, dataset_id: int, scope: Any, limit: int | None) -> list[Any]:
    from app.records.service import filter_clauses

    with ctx.session() as db:
        query = select(Record).where(and_(*filter_clauses(dataset_id, scope))).order_by(Record.id)
        if limit:
            query = query.limit(limit)
        rows = db.scalars(query).all()
        for r in rows:
            db.expunge(r)
        return list(rows)


def _language(ctx: JobContext) -> str:
    with ctx.session() as db:
        dataset = db.get(Dataset, ctx.dataset)
        if dataset is None:
            raise NotFound(f"dataset {ctx.dataset} not found")
        return prompt_language(dataset.language)


def run_evol_job(ctx: JobContext) -> None:
    from app.generation.schemas import EvolJobParams
    from app.pipeline.evol import EvolItem, EvolParams, run_evol

    p = EvolJobParams.model_validate(ctx.params)
    teacher = get_teacher(p)
    language = _language(ctx)
    rows = scope_rows(ctx, ctx.dataset, p.scope, p.max_items)
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

    copies = [0]

    def emit(event: Any) -> None:
        copies[0] += upsert_generated(ctx, event.records, dataset_id=ctx.dataset, key_prefix=key_prefix)
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
            "copies_skipped": copies[0],
            "items": len(items),
            **usage,
        }
    )
    if result.stop_reason == "stopped" and ctx.cancelled:
        raise JobCancelled()


def judge_item(r: Record) -> JudgeItem:
    """What the judge reads of a record (a conversation: its first question and last answer); the cost
    estimate builds the same prompts."""
    from app.pipeline.judge import JudgeItem

    instruction, output = r.instruction, r.output
    if r.messages and not instruction:
        instruction = next((m["content"] for m in r.messages if m.get("role") == "user"), "")
        output = next((m["content"] for m in reversed(r.messages) if m.get("role") == "assistant"), "")
    return JudgeItem(key=f"rec:{r.id}", instruction=instruction, input=r.input, output=output)


def run_judge_job(ctx: JobContext) -> None:
    from app.generation.schemas import JudgeJobParams
    from app.pipeline.judge import JudgeParams, run_judge
    from app.pipeline.textnorm import normalize

    p = JudgeJobParams.model_validate(ctx.params)
    teacher = get_teacher(p)
    language = _language(ctx)
    rows = scope_rows(ctx, ctx.dataset, p.scope, p.max_items)
    items = [judge_item(r) for r in rows]
    params = JudgeParams(rubric=p.rubric, threshold=p.threshold, language=language)
    log = CallLog(ctx.job_id)
    counters: dict[str, Any] = {
        "scored": 0,
        "kept": 0,
        "below_threshold": 0,
        "unscored": 0,
        "human_advised": 0,
    }
    ctx.progress(0, len(items), counters=counters)

    # The instances of one classification task are judged together: their mean score decides for all of
    # them, so the judge never drops some of a task's labels and undoes output-first balance.
    task_of = {r.id: normalize(r.instruction) for r in rows if r.is_classification and r.instruction}
    members: dict[str, set[int]] = {}
    for rid, task in task_of.items():
        members.setdefault(task, set()).add(rid)
    waiting: dict[str, list[Any]] = {}

    def verdict(res: Any, below: bool, task_mean: float | None) -> Verdict:
        if below:
            counters["below_threshold"] += 1
        elif res.status == "unscored":
            counters["unscored"] += 1
        else:
            counters["kept"] += 1
        counters["scored"] += res.score is not None
        judged = {
            "score": res.score,
            "rationale": res.rationale,
            "status": "rejected" if below else ("unscored" if res.status == "unscored" else "kept"),
            "threshold": p.threshold,
            "attempts": res.attempts,
            "model": teacher.model,
            **({"task_mean": task_mean} if task_mean is not None else {}),
        }
        shown = res.score if task_mean is None else f"{task_mean:.2f} (task mean)"
        return Verdict(
            record_id=int(res.key.removeprefix("rec:")),
            # A kept or unscored record's status is never touched (a judge never promotes one).
            filter_reason="judge_below" if p.apply and below else None,
            meta={"judge": judged},
            values={"judge_score": res.score},
            detail=f"judge {shown} < {p.threshold}" if below else None,
        )

    def task_verdicts(results: list[Any], complete: bool) -> list[Verdict]:
        scores = [r.score for r in results if r.score is not None]
        mean = sum(scores) / len(scores) if scores else None
        below = complete and mean is not None and mean < p.threshold
        return [verdict(r, below, mean) for r in results]

    def write(verdicts: list[Verdict]) -> None:
        if not verdicts:
            return
        with ctx.session() as db:
            applied = apply_verdicts(
                db, "judge", verdicts, job_id=ctx.job_id, override_human=p.override_human
            )
        counters["human_advised"] += applied.advised
        if p.override_human:
            counters["human_overridden"] = counters.get("human_overridden", 0) + applied.human_overridden
        done = counters["kept"] + counters["below_threshold"] + counters["unscored"]
        ctx.progress(done, len(items), counters=counters, usage=log.flush())

    def emit(results: list[Any]) -> None:
        verdicts = []
        for res in results:
            task = task_of.get(int(res.key.removeprefix("rec:")))
            if task is None:
                verdicts.append(verdict(res, res.status == "rejected", None))
                continue
            waiting.setdefault(task, []).append(res)
            if len(waiting[task]) == len(members[task]):
                verdicts.extend(task_verdicts(waiting.pop(task), complete=True))
        write(verdicts)

    from app.generation.batch_mode import run_items

    summary = run_items(
        ctx,
        teacher,
        log,
        p.budget_usd,
        run_judge,
        items=items,
        params=params,
        emit=emit,
        batch=p.batch,
        counters=counters,
        total=len(items),
    )
    # A stopped job leaves tasks judged in part: their scores are stored, their statuses left alone.
    write([v for results in waiting.values() for v in task_verdicts(results, complete=False)])
    ctx.set_result(
        {
            "stop_reason": summary.stop_reason,
            "message": summary.message,
            "kept": counters["kept"],
            "below_threshold": counters["below_threshold"],
            "unscored": counters["unscored"],
            "mean_score": summary.mean_score,
            "human_advised": counters["human_advised"],
            **log.flush(),
        }
    )
    if summary.stop_reason == "stopped" and ctx.cancelled:
        raise JobCancelled()
