"""How a machine job's verdicts reach records without overturning a person's decision (DESIGN rule 7).

Dedup, rules and the judge each decide, per record, "keep" or "filter with this reason". Where no person
has decided the record, a filter verdict sets its status and reason. Where a person has (accepted,
rejected, edited or rated it: `Record.human_decided`), the status is left alone and the verdict is kept
as advice: `meta["advice"][kind]` with its reason and job, and `Record.advice` (the first objecting
kind's reason, for listing disagreements). A curator who asks for it explicitly (`override_human`) gets
the machine's verdict applied to those records too.

Each batch re-reads the records' `meta` and `human_decided` under a row lock in the transaction that
writes them: a person who decides a record while the job runs is seen, and their decision stands.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import bindparam, select, text, update
from sqlalchemy.orm import Session

from app.records.models import Record

Kind = Literal["dedup", "rules", "judge", "decontaminate"]


@dataclass
class Verdict:
    record_id: int
    filter_reason: str | None  # None: the machine keeps the record (it never promotes one)
    meta: dict[str, Any]  # the job's own meta entries, e.g. {"judge": {...}}: written whatever the verdict
    values: dict[str, Any] = field(default_factory=dict)  # columns always written: nn_score, judge_score...
    detail: str | None = None  # shown with the advice ("ROUGE-L 0.91 with record 12", a rule's detail)


@dataclass
class Applied:
    filtered: int = 0  # statuses changed to filtered
    advised: int = 0  # human-decided records the machine would have filtered: status kept, advice stored
    human_overridden: int = 0  # human-decided records filtered because the curator asked for it


def apply_verdicts(
    db: Session, kind: Kind, verdicts: Sequence[Verdict], *, job_id: int, override_human: bool
) -> Applied:
    """Write one batch of a job's verdicts in the caller's transaction."""
    applied = Applied()
    if not verdicts:
        return applied
    ids = [v.record_id for v in verdicts]
    if db.get_bind().dialect.name == "sqlite":
        # SQLite has no row locks: take the database's write lock before reading, so that the rows read
        # here are the ones written (a read-then-write transaction would otherwise fail on a concurrent
        # commit instead of waiting for it).
        db.execute(text("UPDATE records SET version = version WHERE id = :id"), {"id": ids[0]})
    current = {
        rid: (dict(meta or {}), bool(human))
        for rid, meta, human in db.execute(
            select(Record.id, Record.meta, Record.human_decided).where(Record.id.in_(ids)).with_for_update()
        )
    }
    value_keys = sorted({k for v in verdicts for k in v.values})
    kept: list[dict[str, Any]] = []  # status untouched: meta, advice and the job's values only
    filtered: list[dict[str, Any]] = []
    for v in verdicts:
        if v.record_id not in current:
            continue  # deleted with its dataset meanwhile
        meta, human = current[v.record_id]
        meta.update(v.meta)
        advice: dict[str, Any] = dict(meta.get("advice") or {})
        advice.pop(kind, None)  # this job's verdict replaces the kind's earlier one
        row: dict[str, Any] = {"rid": v.record_id, **{f"v_{k}": v.values.get(k) for k in value_keys}}
        if v.filter_reason is not None and human and not override_human:
            advice[kind] = {"reason": v.filter_reason, "detail": v.detail, "job_id": job_id}
            applied.advised += 1
        if advice:
            meta["advice"] = advice
        else:
            meta.pop("advice", None)
        row.update(new_meta=meta, new_advice=_first_reason(advice))
        if v.filter_reason is not None and (override_human or not human):
            applied.filtered += 1
            applied.human_overridden += human
            filtered.append({**row, "new_reason": v.filter_reason})
        else:
            kept.append(row)
    values: dict[str, Any] = {k: bindparam(f"v_{k}") for k in value_keys}
    stmt = (
        update(Record)
        .where(Record.id == bindparam("rid"))
        .values(meta=bindparam("new_meta"), advice=bindparam("new_advice"), **values)
        .execution_options(synchronize_session=False)
    )
    conn = db.connection()
    if kept:
        conn.execute(stmt, kept)
    if filtered:
        conn.execute(stmt.values(status="filtered", reason=bindparam("new_reason")), filtered)
    return applied


def _first_reason(advice: dict[str, Any]) -> str | None:
    for kind in ("decontaminate", "judge", "dedup", "rules"):
        if kind in advice:
            return str(advice[kind]["reason"])[:64]
    return None
