from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, delete, exists, func, or_, select, text, update
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.auth.models import Role, User
from app.base import utcnow
from app.datasets.service import require_dataset
from app.db import get_or_404
from app.edge import MAX_ID
from app.errors import Conflict, Invalid, not_found_as
from app.records.models import Record, RecordRevision, RecordTag, ReviewEvent
from app.records.schemas import RecordFilter, RecordUpdate

CONTENT_FIELDS = ("instruction", "input", "output", "system", "messages")
MAX_PAGE = 500


def encode_cursor(last_id: int, desc: bool) -> str:
    return base64.urlsafe_b64encode(json.dumps({"a": last_id, "d": desc}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, bool]:
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        after = int(data["a"])
        if not 0 <= after <= MAX_ID:
            raise ValueError(after)
        return after, bool(data["d"])
    except (ValueError, KeyError, TypeError, OverflowError) as exc:  # 1e400 is inf: int() overflows
        raise Invalid("invalid cursor: use the next_cursor of a previous page", field="cursor") from exc


def filter_clauses(dataset_id: int, flt: RecordFilter) -> list[ColumnElement[bool]]:
    clauses: list[ColumnElement[bool]] = [Record.dataset_id == dataset_id]
    if flt.status:
        clauses.append(Record.status.in_(flt.status))
    if flt.source:
        if flt.source.endswith("*"):
            clauses.append(Record.source.startswith(flt.source[:-1], autoescape=True))
        else:
            clauses.append(Record.source == flt.source)
    if flt.tag:
        clauses.append(
            exists().where(
                RecordTag.record_id == Record.id, RecordTag.tag == flt.tag, RecordTag.dataset_id == dataset_id
            )
        )
    if flt.q:
        clauses.append(
            or_(
                Record.instruction.icontains(flt.q, autoescape=True),
                Record.input.icontains(flt.q, autoescape=True),
                Record.output.icontains(flt.q, autoescape=True),
            )
        )
    if flt.reason:
        clauses.append(Record.reason == flt.reason)
    if flt.label:
        clauses.append(Record.label == flt.label)
    if flt.flagged is not None:
        clauses.append(Record.flagged.is_(flt.flagged))
    if flt.job_id is not None:
        clauses.append(Record.job_id == flt.job_id)
    if flt.min_nn_score is not None:
        clauses.append(Record.nn_score >= flt.min_nn_score)
    if flt.max_nn_score is not None:
        clauses.append(Record.nn_score <= flt.max_nn_score)
    if flt.min_judge_score is not None:
        clauses.append(Record.judge_score >= flt.min_judge_score)
    if flt.max_judge_score is not None:
        clauses.append(Record.judge_score <= flt.max_judge_score)
    if flt.ids is not None:
        clauses.append(Record.id.in_(flt.ids))
    if flt.human_decided is not None:
        clauses.append(Record.human_decided.is_(flt.human_decided))
    if flt.disagreement is not None:
        disagree = and_(
            Record.human_decided.is_(True),
            Record.advice.is_not(None),
            Record.status.in_(("pending", "accepted")),
        )
        clauses.append(disagree if flt.disagreement else ~disagree)
    return clauses


def count_records(*, db: Session, user: User, dataset_id: int, flt: RecordFilter) -> int:
    """How many records of the dataset match the filter."""
    require_dataset(db=db, user=user, dataset_id=dataset_id)
    return int(
        db.scalar(select(func.count()).select_from(Record).where(and_(*filter_clauses(dataset_id, flt)))) or 0
    )


def count_flagged(*, db: Session, dataset_id: int, cap: int) -> int:
    """How many records of the dataset are flagged for a curator, counted up to `cap` (a page says "cap+")."""
    flagged = select(Record.id).where(Record.dataset_id == dataset_id, Record.flagged.is_(True)).limit(cap)
    return int(db.scalar(select(func.count()).select_from(flagged.subquery())) or 0)


def filtered_query(dataset_id: int, flt: RecordFilter) -> Select[Record]:
    return select(Record).where(and_(*filter_clauses(dataset_id, flt)))


def list_records(
    *,
    db: Session,
    user: User,
    dataset_id: int,
    flt: RecordFilter,
    limit: int = 50,
    cursor: str | None = None,
    desc: bool = False,
) -> tuple[Sequence[Record], str | None]:
    """A page of records in id order; the cursor is opaque and stable under inserts."""
    require_dataset(db=db, user=user, dataset_id=dataset_id)
    limit = max(1, min(limit, MAX_PAGE))
    query = filtered_query(dataset_id, flt)
    if cursor:
        after, desc = decode_cursor(cursor)
        query = query.where(Record.id < after if desc else Record.id > after)
    query = query.order_by(Record.id.desc() if desc else Record.id).limit(limit + 1)
    rows = db.scalars(query).all()
    next_cursor = encode_cursor(rows[limit - 1].id, desc) if len(rows) > limit else None
    return rows[:limit], next_cursor


def get_record(
    *,
    db: Session,
    user: User,
    record_id: int,
    min_role: str = Role.annotator.value,
    for_update: bool = False,
) -> Record:
    """The record if the user may see it; `for_update` (every change) also locks it, see lock_record."""
    record = get_or_404(db, Record, record_id, f"record {record_id}")
    with not_found_as(f"record {record_id}"):
        require_dataset(db=db, user=user, dataset_id=record.dataset_id, min_role=min_role)
    if for_update:
        lock_record(db, record)
    return record


def lock_record(db: Session, record: Record) -> None:
    """Hold the record's row until commit and reload it. A change checked against `version` then sees
    the latest committed version: of two edits sent with the same version one passes and the other gets
    409, instead of both passing (a lost update, or a 500 on the revision's unique key)."""
    if db.get_bind().dialect.name == "sqlite":
        # SQLite drops FOR UPDATE; a write takes its database write lock (waiting out busy_timeout) and
        # the reads after it in the same transaction see the latest commit.
        db.execute(text("UPDATE records SET version = version WHERE id = :id"), {"id": record.id})
    db.refresh(record, with_for_update=True)


def content_of(record: Record | RecordRevision) -> dict[str, Any]:
    return {f: getattr(record, f) for f in CONTENT_FIELDS}


def set_tags(*, db: Session, record: Record, tags: list[str]) -> None:
    db.execute(delete(RecordTag).where(RecordTag.record_id == record.id))
    for tag in tags:
        db.add(RecordTag(record_id=record.id, tag=tag, dataset_id=record.dataset_id))
    record.tags = list(tags)


def update_record(*, db: Session, user: User, record_id: int, change: RecordUpdate) -> Record:
    """Apply an edit; content changes are kept as revisions, and a stale version is refused with 409."""
    record = get_record(db=db, user=user, record_id=record_id, for_update=True)
    if change.version != record.version:
        raise Conflict(
            f"record {record_id} was changed since you loaded it (your version {change.version}, "
            f"now {record.version}); reload it and apply your edit again",
            current_version=record.version,
        )
    before = {
        "status": record.status,
        "rating": record.rating,
        "tags": list(record.tags),
        "label": record.label,
    }
    new_content = {f: getattr(change, f) for f in CONTENT_FIELDS if getattr(change, f) is not None}
    if "messages" in new_content:
        new_content["messages"] = [m.model_dump() for m in change.messages or []]
    before_content = {f: getattr(record, f) for f in new_content}
    content_changed = any(new_content[f] != before_content[f] for f in new_content)
    if content_changed:
        # The first edit keeps the original text, whatever the version: a rating or tag may have come first.
        if db.scalar(select(RecordRevision.id).where(RecordRevision.record_id == record.id)) is None:
            db.add(
                RecordRevision(
                    record_id=record.id,
                    version=record.version,
                    edited_by=None,
                    edited_at=record.created_at,
                    note="original",
                    **content_of(record),
                )
            )
        for field, value in new_content.items():
            setattr(record, field, value)
        record.version += 1
        db.add(
            RecordRevision(
                record_id=record.id,
                version=record.version,
                edited_by=user.id,
                note=change.note,
                **content_of(record),
            )
        )
    if change.tags is not None:
        set_tags(db=db, record=record, tags=change.tags)
    if change.rating is not None:
        record.rating = change.rating
    if change.label is not None:
        record.label = change.label
    if change.status is not None:
        record.status = change.status
        record.reason = change.reason or ("human" if change.status in ("accepted", "rejected") else None)
        record.reviewed_by = user.id
        record.reviewed_at = utcnow()
    if not content_changed and (change.status or change.rating or change.tags is not None or change.label):
        record.version += 1
    if content_changed or change.status or change.rating is not None or change.label is not None:
        record.human_decided = True  # tags alone are not a decision about the record
    after = {
        "status": record.status,
        "rating": record.rating,
        "tags": list(record.tags),
        "label": record.label,
    }
    action = "edit" if content_changed else (change.status or "update")
    add_event(db=db, record=record, user=user, action=action, before=before, after=after)
    audit.record(
        db=db,
        user_id=user.id,
        action=f"record.{action}",
        entity_type="record",
        entity_id=record.id,
        dataset_id=record.dataset_id,
        detail={
            "version": record.version,
            "content_changed": content_changed,  # the texts themselves are in the record's revisions
            "content_fields": sorted(f for f in new_content if new_content[f] != before_content[f]),
        },
        before=before,
        after=after,
    )
    db.flush()
    return record


def add_event(
    *,
    db: Session,
    record: Record,
    user: User,
    action: str,
    before: dict[str, Any],
    after: dict[str, Any],
    at: datetime | None = None,
) -> None:
    """Log one decision on a record (timestamped: annotator speed, agreement and undo read these)."""
    db.add(
        ReviewEvent(
            dataset_id=record.dataset_id,
            record_id=record.id,
            user_id=user.id,
            action=action,
            before=before,
            after=after,
            **({"at": at} if at is not None else {}),
        )
    )


def bulk_set_status(
    *, db: Session, user: User, dataset_id: int, flt: RecordFilter, status: str, reason: str | None
) -> int:
    """Change the status of every record matching the filter (not only a visible page)."""
    dataset = require_dataset(db=db, user=user, dataset_id=dataset_id, min_role=Role.curator.value)
    ids = select(Record.id).where(and_(*filter_clauses(dataset_id, flt))).scalar_subquery()
    result = db.execute(
        update(Record)
        .where(Record.id.in_(ids))
        .values(
            status=status,
            reason=reason or "bulk",
            version=Record.version + 1,
            reviewed_by=user.id,
            reviewed_at=utcnow(),
            updated_at=utcnow(),
            human_decided=True,
        )
        .execution_options(synchronize_session=False)
    )
    count = int(result.rowcount or 0)  # type: ignore[attr-defined]
    audit.record(
        db=db,
        user_id=user.id,
        action="record.bulk_status",
        entity_type="dataset",
        entity_id=dataset_id,
        project_id=dataset.project_id,
        detail={"filter": flt.model_dump(exclude_none=True), "status": status, "count": count},
    )
    return count


def revisions(*, db: Session, user: User, record_id: int) -> Sequence[RecordRevision]:
    get_record(db=db, user=user, record_id=record_id)
    return db.scalars(
        select(RecordRevision).where(RecordRevision.record_id == record_id).order_by(RecordRevision.version)
    ).all()


def revise_by_machine(
    *, db: Session, record: Record, output: str, note: str, provenance: dict[str, Any], meta_key: str
) -> RecordRevision:
    """A job's new answer for a locked record, kept as a revision like a person's edit (the original text
    is stored first, so the review page shows the diff and the history), with no editor (`edited_by` is
    None: a machine) and its provenance appended to `meta[meta_key]` with the version it made. The
    record's status and human_decided stay as they are: a person confirms a machine's revision by
    deciding the record after it (app.review.insights reads that as the preference pair's confirmation)."""
    if db.scalar(select(RecordRevision.id).where(RecordRevision.record_id == record.id)) is None:
        db.add(
            RecordRevision(
                record_id=record.id,
                version=record.version,
                edited_by=None,
                edited_at=record.created_at,
                note="original",
                **content_of(record),
            )
        )
    previous = record.version
    record.output = output
    record.version += 1
    revision = RecordRevision(
        record_id=record.id, version=record.version, edited_by=None, note=note, **content_of(record)
    )
    db.add(revision)
    meta = dict(record.meta or {})
    meta[meta_key] = [
        *(meta.get(meta_key) or []),
        {**provenance, "version": record.version, "previous_version": previous},
    ]
    record.meta = meta
    db.flush()
    return revision
