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
