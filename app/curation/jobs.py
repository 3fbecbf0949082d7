"""Curation jobs: they change statuses, reasons and scores of records. They never delete one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import and_, bindparam, select, update

from app.curation.schemas import DedupParams, RulesParams
from app.datasets.models import Dataset
from app.errors import NotFound
from app.records.models import Record
from app.records.schemas import RecordFilter
from app.records.service import filter_clauses

BATCH = 2000


def text_of(field: str, instruction: str, input_: str, messages: list[Any] | None) -> str:
    if field == "instruction":
        return instruction if instruction or not messages else _first_user(messages)
    if field == "instruction_input":
        return f"{instruction}\n{input_}".strip() if instruction or not messages else _first_user(messages)
    if messages:
        return "\n".join(m["content"] for m in messages if m.get("role") in ("user", "system"))
    return f"{instruction}\n{input_}".strip()


def _first_user(messages: list[Any]) -> str:
    return next((str(m["content"]) for m in messages if m.get("role") == "user"), "")


def iter_scope(ctx: Any, dataset_id: int, scope: RecordFilter) -> Iterator[list[Any]]:
    """Batches of (id, instruction, input, output, messages, meta) in id order, each from a short read."""
    last = 0
    clauses = filter_clauses(dataset_id, scope)
    while True:
        with ctx.session() as db:
            rows = db.execute(
                select(
                    Record.id, Record.instruction, Record.input, Record.output, Record.messages, Record.meta
                )
                .where(and_(*clauses), Record.id > last)
                .order_by(Record.id)
                .limit(BATCH)
            ).all()
        if not rows:
            return
        last = rows[-1][0]
        yield list(rows)


def count_scope(ctx: Any, dataset_id: int, scope: RecordFilter) -> int:
    from sqlalchemy import func

    with ctx.session() as db:
        return int(
            db.scalar(
                select(func.count()).select_from(Record).where(and_(*filter_clauses(dataset_id, scope)))
            )
            or 0
        )


_UPDATE = (
    update(Record)
    .where(Record.id == bindparam("rid"))
    .values(
        status=bindparam("new_status"),
        reason=bindparam("new_reason"),
        nn_score=bindparam("new_nn"),
        nn_record_id=bindparam("new_nn_id"),
        meta=bindparam("new_meta"),
    )
)
_UPDATE_META = (
    update(Record)
    .where(Record.id == bindparam("rid"))
    .values(nn_score=bindparam("new_nn"), nn_record_id=bindparam("new_nn_id"), meta=bindparam("new_meta"))
)


def _write(ctx: Any, filtered: list[dict[str, Any]], kept: list[dict[str, Any]]) -> None:
    with ctx.session() as db:
        conn = db.connection()
        if filtered:
            conn.execute(_UPDATE.execution_options(synchronize_session=False), filtered)
        if kept:
            conn.execute(_UPDATE_META.execution_options(synchronize_session=False), kept)


def run_dedup_job(ctx: Any) -> None:
    from app.pipeline.rouge import NearDuplicateIndex
    from app.pipeline.textnorm import normalize

    params = DedupParams.model_validate(ctx.params)
    total = count_scope(ctx, ctx.dataset_id, params.scope)
    index = NearDuplicateIndex(threshold=params.threshold, stem=params.stem)
    seen_exact: dict[str, int] = {}
    counters = {"scanned": 0, "kept": 0, "exact_dup": 0, "rouge_dup": 0}
    ctx.progress(0, total, counters=counters)
    for batch in iter_scope(ctx, ctx.dataset_id, params.scope):
        filtered: list[dict[str, Any]] = []
        kept: list[dict[str, Any]] = []
        for rid, instruction, input_, _output, messages, meta in batch:
            text = text_of(params.field, instruction, input_, messages)
            meta = dict(meta or {})
            counters["scanned"] += 1
            norm = normalize(text) if params.exact else None
            if norm is not None and norm in seen_exact:
                meta["dedup"] = {"method": "exact", "score": 1.0, "nearest": seen_exact[norm]}
                filtered.append(
                    {
                        "rid": rid,
                        "new_status": "filtered",
                        "new_reason": "exact_dup",
                        "new_nn": 1.0,
                        "new_nn_id": seen_exact[norm],
                        "new_meta": meta,
                    }
                )
                counters["exact_dup"] += 1
                continue
            decision = index.check_and_add(str(rid), text)
            nearest = int(decision.nearest) if decision.nearest is not None else None
            meta["dedup"] = {
                "method": "rouge_l",
                "score": round(decision.score, 6),
                "nearest": nearest,
                "threshold": params.threshold,
            }
            if decision.kept:
                if norm is not None:
                    seen_exact[norm] = rid
                kept.append({"rid": rid, "new_nn": decision.score, "new_nn_id": nearest, "new_meta": meta})
                counters["kept"] += 1
            else:
                filtered.append(
                    {
                        "rid": rid,
                        "new_status": "filtered",
                        "new_reason": "rouge_dup",
                        "new_nn": decision.score,
                        "new_nn_id": nearest,
                        "new_meta": meta,
                    }
                )
                counters["rouge_dup"] += 1
        _write(ctx, filtered, kept)
        ctx.progress(counters["scanned"], total, counters=counters)
    ctx.set_result(counters)


def run_rules_job(ctx: Any) -> None:
    from app.pipeline.rules import RuleConfig, evaluate, funnel

    params = RulesParams.model_validate(ctx.params)
    with ctx.session() as db:
        dataset = db.get(Dataset, ctx.dataset_id)
        if dataset is None:
            raise NotFound(f"dataset {ctx.dataset_id} not found")
        language = dataset.language
        saved = dict((dataset.settings or {}).get("rules") or {})
    config = RuleConfig(
        enabled=params.rules or saved.get("enabled"), params={**saved.get("params", {}), **params.params}
    )
    total = count_scope(ctx, ctx.dataset_id, params.scope)
    counters: dict[str, Any] = {"scanned": 0, "kept": 0, "filtered": 0, "funnel": {}}
    all_hits: list[list[Any]] = []
    ctx.progress(0, total, counters=counters)
    for batch in iter_scope(ctx, ctx.dataset_id, params.scope):
        filtered: list[dict[str, Any]] = []
        for rid, instruction, input_, output, messages, meta in batch:
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
                meta = dict(meta or {})
                meta["rules"] = [{"code": h.code, "detail": h.detail} for h in hits]
                filtered.append(
                    {"rid": rid, "new_status": "filtered", "new_reason": hits[0].code, "new_meta": meta}
                )
                counters["filtered"] += 1
            else:
                counters["kept"] += 1
        if filtered:
            with ctx.session() as db:
                db.connection().execute(
                    update(Record)
                    .where(Record.id == bindparam("rid"))
                    .values(
                        status=bindparam("new_status"),
                        reason=bindparam("new_reason"),
                        meta=bindparam("new_meta"),
                    )
                    .execution_options(synchronize_session=False),
                    filtered,
                )
        counters["funnel"] = funnel(all_hits)
        ctx.progress(counters["scanned"], total, counters=counters)
    ctx.set_result(counters)


def _insert_generated(ctx: Any, rows: list[tuple[Any, ...]]) -> None:
    from app.imports.service import insert_ignore_duplicates

    with ctx.session() as db:
        insert_ignore_duplicates(db.connection(), rows)


def run_convert_job(ctx: Any) -> None:
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
                (
                    ctx.dataset_id,
                    r["instruction"],
                    r["input"],
                    r["output"],
                    None,
                    None,
                    "pending",
                    f"convert:{r['meta']['template']}",
                    None,
                    None,
                    f"cv{ctx.job_id}:{start + n}",
                    ctx.job_id,
                    {"convert": r["meta"]},
                    None,
                )
                for n, r in enumerate(chunk)
            ],
        )
        ctx.progress(start + len(chunk), total, counters={"rows": len(rows), "records": total})
    ctx.set_result({"rows": len(rows), "records": total, "skipped_empty": len(rows) - total})


def run_mix_job(ctx: Any) -> None:
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
            if source.dataset_id == ctx.dataset_id:
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
        rows = []
        for r, (src, idx) in zip(
            result.items[start : start + BATCH], result.origins[start : start + BATCH], strict=True
        ):
            rows.append(
                (
                    ctx.dataset_id,
                    r.instruction,
                    r.input,
                    r.output,
                    r.system,
                    r.messages,
                    "pending",
                    f"mix:{src}",
                    r.label,
                    None,
                    f"mx{ctx.job_id}:{src}:{idx}",
                    ctx.job_id,
                    {"mix": {"source_dataset": int(src), "source_record": r.id}},
                    None,
                )
            )
        _insert_generated(ctx, rows)
        ctx.progress(start + len(rows), total)
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
