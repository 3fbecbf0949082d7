"""Curation jobs: they change statuses, reasons and scores of records. They never delete one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import ColumnElement, and_, func, select

from app.curation.schemas import DedupParams, RulesParams
from app.curation.verdicts import Kind, Verdict, apply_verdicts
from app.datasets.models import Dataset
from app.errors import NotFound
from app.jobs.context import JobContext
from app.records.bulk import NewRecord, insert_new
from app.records.models import Record
from app.records.schemas import RecordFilter
from app.records.service import filter_clauses

BATCH = 2000


def text_of(field: str, instruction: str, input_: str, messages: list[Any] | None, output: str = "") -> str:
    """The text a dedup key compares: see DedupParams.field."""
    if field in ("instruction", "task"):
        return instruction if instruction or not messages else _first_user(messages)
    if field == "instruction_input":
        return f"{instruction}\n{input_}".strip() if instruction or not messages else _first_user(messages)
    if field == "record":
        if messages and not instruction:
            return "\n".join(str(m["content"]) for m in messages)
        return f"{instruction}\n{input_}\n{output}".strip()
    if messages:
        return "\n".join(m["content"] for m in messages if m.get("role") in ("user", "system"))
    return f"{instruction}\n{input_}".strip()


def _first_user(messages: list[Any]) -> str:
    return next((str(m["content"]) for m in messages if m.get("role") == "user"), "")


def iter_scope(
    ctx: JobContext, dataset_id: int, scope: RecordFilter, *extra: ColumnElement[bool]
) -> Iterator[list[Any]]:
    """Batches of (id, instruction, input, output, messages, meta, human_decided) in id order, each from a
    short read."""
    last = 0
    clauses = [*filter_clauses(dataset_id, scope), *extra]
    while True:
        with ctx.session() as db:
            rows = db.execute(
                select(
                    Record.id,
                    Record.instruction,
                    Record.input,
                    Record.output,
                    Record.messages,
                    Record.meta,
                    Record.human_decided,
                )
                .where(and_(*clauses), Record.id > last)
                .order_by(Record.id)
                .limit(BATCH)
            ).all()
        if not rows:
            return
        last = rows[-1][0]
        yield list(rows)


def count_scope(ctx: JobContext, dataset_id: int, scope: RecordFilter, *extra: ColumnElement[bool]) -> int:
    with ctx.session() as db:
        return int(
            db.scalar(
                select(func.count())
                .select_from(Record)
                .where(and_(*filter_clauses(dataset_id, scope), *extra))
            )
            or 0
        )


def human_first(ctx: JobContext, dataset_id: int, scope: RecordFilter, override: bool) -> Iterator[list[Any]]:
    """The scope's records, those a person decided first: the records people kept are what the machine's
    later decisions build on (a pending near-duplicate of an accepted record is the one filtered). With
    `override` every record is the machine's to decide, in plain id order."""
    if override:
        yield from iter_scope(ctx, dataset_id, scope)
        return
    yield from iter_scope(ctx, dataset_id, scope, Record.human_decided.is_(True))
    yield from iter_scope(ctx, dataset_id, scope, Record.human_decided.is_(False))


def _apply(
    ctx: JobContext, kind: Kind, verdicts: list[Verdict], override: bool, counters: dict[str, Any]
) -> None:
    with ctx.session() as db:
        applied = apply_verdicts(db, kind, verdicts, job_id=ctx.job_id, override_human=override)
    counters["human_advised"] = counters.get("human_advised", 0) + applied.advised
    if override:
        counters["human_overridden"] = counters.get("human_overridden", 0) + applied.human_overridden


def run_dedup_job(ctx: JobContext) -> None:
    from app.pipeline.rouge import NearDuplicateIndex

    params = DedupParams.model_validate(ctx.params)
    total = count_scope(ctx, ctx.dataset, params.scope)
    index = NearDuplicateIndex(threshold=params.threshold, stem=params.stem)
    seen_exact: dict[str, int] = {}
    # field "task": records sharing an instruction are one task's instances and share its decision.
    tasks: dict[str, tuple[int, str | None, float, int | None]] = {}
    counters: dict[str, Any] = {"scanned": 0, "kept": 0, "exact_dup": 0, "rouge_dup": 0, "human_advised": 0}
    ctx.progress(0, total, counters=counters)
    for batch in human_first(ctx, ctx.dataset, params.scope, params.override_human):
        verdicts: list[Verdict] = []
        for rid, instruction, input_, output, messages, _meta, _human in batch:
            counters["scanned"] += 1
            verdict = _dedup_one(params, index, seen_exact, tasks, rid, instruction, input_, output, messages)
            counters[verdict.filter_reason or "kept"] += 1
            verdicts.append(verdict)
        _apply(ctx, "dedup", verdicts, params.override_human, counters)
        ctx.progress(counters["scanned"], total, counters=counters)
    ctx.set_result(counters)


def _dedup_one(
    params: DedupParams,
    index: Any,
    seen_exact: dict[str, int],
    tasks: dict[str, tuple[int, str | None, float, int | None]],
    rid: int,
    instruction: str,
    input_: str,
    output: str,
    messages: list[Any] | None,
) -> Verdict:
    from app.pipeline.textnorm import normalize

    text = text_of(params.field, instruction, input_, messages, output)
    exact_text = text_of("record", instruction, input_, messages, output) if params.field == "task" else text
    norm = normalize(exact_text) if params.exact else None
    if norm is not None and norm in seen_exact:
        dup_of = seen_exact[norm]
        return _dedup_verdict(
            rid, "exact_dup", 1.0, dup_of, {"method": "exact", "score": 1.0, "nearest": dup_of}
        )
    if params.field == "task":
        task_key = normalize(text)
        if task_key in tasks:
            # Another instance of a task already decided: same decision, never a duplicate of its sibling.
            first, task_reason, score, task_nearest = tasks[task_key]
            if task_reason is None and norm is not None:
                seen_exact[norm] = rid
            detail = {
                "method": "same_task",
                "task_record": first,
                "score": round(score, 6),
                "nearest": task_nearest,
                "threshold": params.threshold,
            }
            return _dedup_verdict(rid, task_reason, score, task_nearest, detail)
    decision = index.check_and_add(str(rid), text)
    nearest = int(decision.nearest) if decision.nearest is not None else None
    reason = None if decision.kept else "rouge_dup"
    if params.field == "task":
        tasks[normalize(text)] = (rid, reason, decision.score, nearest)
    if decision.kept and norm is not None:
        seen_exact[norm] = rid
    detail = {
        "method": "rouge_l",
        "score": round(decision.score, 6),
        "nearest": nearest,
        "threshold": params.threshold,
    }
    return _dedup_verdict(rid, reason, decision.score, nearest, detail)


def _dedup_verdict(
    rid: int, reason: str | None, score: float, nearest: int | None, detail: dict[str, Any]
) -> Verdict:
    return Verdict(
        record_id=rid,
        filter_reason=reason,
        meta={"dedup": detail},
        values={"nn_score": score, "nn_record_id": nearest},
        detail=None if reason is None else f"ROUGE-L {score:.3f} with record {nearest}",
    )


def run_rules_job(ctx: JobContext) -> None:
    from app.pipeline.rules import RuleConfig, evaluate, funnel

    params = RulesParams.model_validate(ctx.params)
    with ctx.session() as db:
        dataset = db.get(Dataset, ctx.dataset)
        if dataset is None:
            raise NotFound(f"dataset {ctx.dataset} not found")
        language = dataset.language
        saved = dict((dataset.settings or {}).get("rules") or {})
    config = RuleConfig(
        enabled=params.rules or saved.get("enabled"), params={**saved.get("params", {}), **params.params}
    )
    total = count_scope(ctx, ctx.dataset, params.scope)
    counters: dict[str, Any] = {"scanned": 0, "kept": 0, "filtered": 0, "human_advised": 0, "funnel": {}}
    all_hits: list[list[Any]] = []
    ctx.progress(0, total, counters=counters)
    for batch in iter_scope(ctx, ctx.dataset, params.scope):
        verdicts: list[Verdict] = []
        for rid, instruction, input_, output, messages, meta, human in batch:
            if messages and not instruction:
                instruction = _first_user(messages)
                output = next(
                    (str(m["content"]) for m in reversed(messages) if m.get("role") == "assistant"), ""
                )
            hits = evaluate(
                instruction=instruction, input=input_, output=output, language=language, config=config
            )
            all_hits.append(hits)
            counters["scanned"] += 1
            if hits:
                verdicts.append(
                    Verdict(
                        record_id=rid,
                        filter_reason=hits[0].code,
                        meta={"rules": [{"code": h.code, "detail": h.detail} for h in hits]},
                        detail=hits[0].detail,
                    )
                )
                counters["filtered"] += 1
            else:
                counters["kept"] += 1
                if human or "rules" in (meta or {}):
                    # Clear an earlier run's hits and advice; untouched records need no write.
                    verdicts.append(Verdict(record_id=rid, filter_reason=None, meta={"rules": []}))
        _apply(ctx, "rules", verdicts, params.override_human, counters)
        counters["funnel"] = funnel(all_hits)
        ctx.progress(counters["scanned"], total, counters=counters)
    ctx.set_result(counters)


def _insert_generated(ctx: JobContext, rows: list[NewRecord]) -> None:
    with ctx.session() as db:
        insert_new(db, rows)


def run_convert_job(ctx: JobContext) -> None:
    """Apply instruction templates to a table (CSV/TSV/JSON/JSONL/Parquet/Natural Instructions)."""
    from pathlib import Path

    from app.curation.schemas import ConvertParams
    from app.errors import Invalid
    from app.imports.service import uploads_dir
    from app.pipeline.convert import (
        NATURAL_INSTRUCTIONS_TEMPLATE,
        ConvertError,
        Template,
        convert_rows,
        read_table,
    )

    params = ConvertParams.model_validate(ctx.params)
    path = uploads_dir() / Path(params.upload).name
    if not path.is_file():
        raise NotFound(f"upload {params.upload} is gone")
    try:
        templates = [Template(**t) for t in params.templates] or [NATURAL_INSTRUCTIONS_TEMPLATE]
        rows = list(read_table(path))
        if params.limit:
            rows = rows[: params.limit]
        records = convert_rows(rows, templates=templates, seed=params.seed, invert=params.invert)
    except (ConvertError, TypeError) as exc:
        raise Invalid(f"convert: {exc}") from exc
    total = len(records)
    ctx.progress(0, total, counters={"rows": len(rows), "records": total})
    for start in range(0, total, BATCH):
        chunk = records[start : start + BATCH]
        _insert_generated(
            ctx,
            [
                NewRecord(
                    dataset_id=ctx.dataset,
                    gen_key=f"cv{ctx.job_id}:{start + n}",
                    source=f"convert:{r['meta']['template']}",
                    instruction=r["instruction"],
                    input=r["input"],
                    output=r["output"],
                    job_id=ctx.job_id,
                    meta={"convert": r["meta"]},
                )
                for n, r in enumerate(chunk)
            ],
        )
        ctx.progress(start + len(chunk), total, counters={"rows": len(rows), "records": total})
    ctx.set_result({"rows": len(rows), "records": total, "skipped_empty": len(rows) - total})


def run_mix_job(ctx: JobContext) -> None:
    """Sample records of several datasets of the same project into this one, then dedup across sources."""
    from app.curation.schemas import MixParams
    from app.errors import Invalid
    from app.pipeline.mix import mix

    params = MixParams.model_validate(ctx.params)
    sources: dict[str, list[Any]] = {}
    with ctx.session() as db:
        for source in params.sources:
            dataset = db.get(Dataset, source.dataset_id)
            # Mixing stays inside a project: the job's creator was authorised for this project only.
            if dataset is None or dataset.project_id != ctx.project_id:
                raise Invalid(f"source dataset {source.dataset_id} is not a dataset of this project")
            if source.dataset_id == ctx.dataset:
                raise Invalid("a mix cannot read from its own target dataset")
            rows = db.execute(
                select(
                    Record.id,
                    Record.instruction,
                    Record.input,
                    Record.output,
                    Record.system,
                    Record.messages,
                    Record.label,
                )
                .where(Record.dataset_id == source.dataset_id, Record.status.in_(source.status))
                .order_by(Record.id)
            ).all()
            sources[str(source.dataset_id)] = list(rows)
    quotas = {str(s.dataset_id): s.quota for s in params.sources if s.quota is not None} or None
    weights = {str(s.dataset_id): s.weight for s in params.sources if s.weight is not None} or None
    result = mix(
        sources,
        quotas=quotas,
        weights=weights,
        total=params.total,
        seed=params.seed,
        text=lambda r: text_of("instruction_input", r.instruction, r.input, r.messages),
        threshold=params.dedup_threshold,
    )
    total = len(result.items)
    ctx.progress(0, total)
    for start in range(0, total, BATCH):
        mixed = [
            NewRecord(
                dataset_id=ctx.dataset,
                gen_key=f"mx{ctx.job_id}:{src}:{idx}",
                source=f"mix:{src}",
                instruction=r.instruction,
                input=r.input,
                output=r.output,
                system=r.system,
                messages=r.messages,
                label=r.label,
                job_id=ctx.job_id,
                meta={"mix": {"source_dataset": int(src), "source_record": r.id}},
            )
            for r, (src, idx) in zip(
                result.items[start : start + BATCH], result.origins[start : start + BATCH], strict=True
            )
        ]
        _insert_generated(ctx, mixed)
        ctx.progress(start + len(mixed), total)
    dropped: dict[str, int] = {}
    for d in result.dropped:
        dropped[d.reason] = dropped.get(d.reason, 0) + 1
    ctx.set_result(
        {
            "requested": result.requested,
            "selected": result.selected,
            "kept": result.kept,
            "dropped": dropped,
            "dropped_examples": [
                {
                    "source": d.source,
                    "index": d.index,
                    "reason": d.reason,
                    "duplicate_of": d.duplicate_of,
                    "score": d.score,
                }
                for d in result.dropped
                if d.reason != "not_selected"
            ][:200],
        }
    )
