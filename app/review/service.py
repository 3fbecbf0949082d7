"""The review flow: the annotator's queue (with soft locks), one-request decisions, undo, edits, assignments."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any, TypeVar

from sqlalchemy import Select, and_, exists, func, or_, select, update
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.auth.models import Role, User
from app.base import utcnow
from app.datasets.models import Dataset
from app.datasets.service import require_dataset
from app.db import insert_ignoring
from app.errors import Conflict, Invalid, NotFound
from app.jobs.models import Job
from app.projects.models import ProjectMember
from app.records import service as records
from app.records.models import Record, RecordAssignment, RecordRevision, ReviewEvent
from app.records.schemas import RecordFilter, RecordUpdate
from app.review.preferences import compare_clauses, judgment_entries, review_preferences
from app.review.schemas import (
    Advice,
    DecisionIn,
    DecisionOut,
    DiffPart,
    EditIn,
    HistoryEntry,
    Machine,
    Neighbour,
    NnStatus,
    Provenance,
    QueuePosition,
    RecordState,
    ReviewItem,
    RevisionDiff,
)

# A record handed to one annotator stays out of the others' queues this long (it is released on decision).
LOCK_MINUTES = 15
VOTES = {"accept": "accepted", "reject": "rejected"}
# Events that move an annotator past a record: what "records per minute" counts.
DECISION_ACTIONS = ("accept", "reject", "skip", "flag", "accepted", "rejected")
CONTENT_TEXT_FIELDS = ("instruction", "input", "output")


def state_of(record: Record) -> dict[str, Any]:
    """The reviewable state of a record, as stored in a ReviewEvent so that undo can restore it."""
    return {
        "status": record.status,
        "reason": record.reason,
        "rating": record.rating,
        "tags": list(record.tags or []),
        "label": record.label,
        "flagged": record.flagged,
        "reviewed_by": record.reviewed_by,
        "reviewed_at": record.reviewed_at.isoformat() if record.reviewed_at else None,
        "human_decided": record.human_decided,
    }


def record_state(record: Record) -> RecordState:
    return RecordState(
        id=record.id,
        version=record.version,
        status=record.status,
        rating=record.rating,
        tags=list(record.tags or []),
        flagged=record.flagged,
    )


# ---------------------------------------------------------------- queue


def _has_assignments(db: Session, user_id: int, dataset_id: int) -> bool:
    return (
        db.scalar(
            select(RecordAssignment.record_id)
            .where(RecordAssignment.user_id == user_id, RecordAssignment.dataset_id == dataset_id)
            .limit(1)
        )
        is not None
    )


Q = TypeVar("Q", bound="Select[*tuple[Any, ...]]")  # any select over records


def _in_queue(
    query: Q, *, user: User, dataset_id: int, assigned: bool, now: datetime, compare: bool = False
) -> Q:
    """Restrict a query over records to this user's queue (see `queue_records`)."""
    if compare:
        return query.where(*compare_clauses(user_id=user.id, dataset_id=dataset_id))
    if assigned:
        return query.join(RecordAssignment, RecordAssignment.record_id == Record.id).where(
            RecordAssignment.user_id == user.id,
            RecordAssignment.dataset_id == dataset_id,
            RecordAssignment.done.is_(False),
        )
    return query.where(
        Record.dataset_id == dataset_id,
        Record.status == "pending",
        Record.flagged.is_(False),
        or_(Record.locked_by.is_(None), Record.locked_by == user.id, Record.locked_until < now),
        ~exists().where(RecordAssignment.record_id == Record.id),
    )


def queue_records(
    *,
    db: Session,
    user: User,
    dataset_id: int,
    after_id: int | None = None,
    limit: int = 5,
    compare: bool = False,
) -> tuple[list[Record], bool]:
    """The next records for this user: their open assignments if a curator assigned them any, otherwise
    pending, unflagged, unassigned records nobody else holds. Handed-out records are soft-locked.

    `compare`: instead, the records with candidates to compare that this user has not judged yet
    (`compare_clauses`), not locked (several people judging the same candidates is what agreement needs)."""
    limit = max(0, min(limit, 50))
    if limit == 0:
        return [], False
    now = utcnow()
    assigned = not compare and _has_assignments(db, user.id, dataset_id)
    query = _in_queue(
        select(Record), user=user, dataset_id=dataset_id, assigned=assigned, now=now, compare=compare
    )
    rows = list(db.scalars(query.where(Record.id > (after_id or 0)).order_by(Record.id).limit(limit)).all())
    if rows and not assigned and not compare:
        db.execute(
            update(Record)
            .where(Record.id.in_([r.id for r in rows]))
            .values(locked_by=user.id, locked_until=now + timedelta(minutes=LOCK_MINUTES))
            .execution_options(synchronize_session=False)
        )
    return rows, assigned


# Counting a whole queue reads every record in it: ~90 ms at 100,000 pending records on a busy 2-core box,
# three times the rest of the page (about 5 µs a record). The count stops here instead, and the page says
# "of 1,000+": past that, the exact figure tells an annotator little.
POSITION_CAP = 1_000


def _count_upto(db: Session, query: Select[int], cap: int) -> tuple[int, bool]:
    """(rows, whether there are more than `cap`), reading at most cap + 1 rows."""
    n = int(db.scalar(select(func.count()).select_from(query.limit(cap + 1).subquery())) or 0)
    return min(n, cap), n > cap


def queue_position(
    *, db: Session, user: User, dataset_id: int, record_id: int | None, compare: bool = False
) -> QueuePosition:
    """The page's "n of N": how many queue records come before the record the page opens at (`?record=`;
    none when it opens at the head of the queue) and how many there are. Counted once when the page opens
    (a count per keystroke would cost every decision a scan), and only up to POSITION_CAP."""
    assigned = not compare and _has_assignments(db, user.id, dataset_id)
    ids = _in_queue(
        select(Record.id), user=user, dataset_id=dataset_id, assigned=assigned, now=utcnow(), compare=compare
    )
    total, total_more = _count_upto(db, ids, POSITION_CAP)
    if record_id is None:
        return QueuePosition(before=0, total=total, total_more=total_more)
    before, before_more = _count_upto(db, ids.where(Record.id < record_id), POSITION_CAP)
    if db.scalar(ids.where(Record.id == record_id)) is None:
        total += 1  # opened at a record outside the queue (a decided one): it counts too
    return QueuePosition(before=before, total=total, before_more=before_more, total_more=total_more)


def open_assignments_by_dataset(*, db: Session, user: User) -> dict[int, int]:
    """The user's open assignments per dataset (a dataset without any is absent)."""
    query = (
        select(RecordAssignment.dataset_id, func.count())
        .where(RecordAssignment.user_id == user.id, RecordAssignment.done.is_(False))
        .group_by(RecordAssignment.dataset_id)
    )
    return dict(db.execute(query).tuples().all())


def open_assignments(*, db: Session, user: User, dataset_id: int) -> int | None:
    """Open assignments of the user in the dataset; None when they review the open queue."""
    if not _has_assignments(db, user.id, dataset_id):
        return None
    return int(
        db.scalar(
            select(func.count())
            .select_from(RecordAssignment)
            .where(
                RecordAssignment.user_id == user.id,
                RecordAssignment.dataset_id == dataset_id,
                RecordAssignment.done.is_(False),
            )
        )
        or 0
    )


# ---------------------------------------------------------------- what the machine knows


def _judge_rationale(meta: dict[str, Any]) -> str | None:
    judge = meta.get("judge")
    if isinstance(judge, dict):
        value = judge.get("rationale") or judge.get("explanation")
        return str(value) if value is not None else None
    value = meta.get("judge_rationale")
    return str(value) if value is not None else None


def _rules(meta: dict[str, Any]) -> list[dict[str, Any]]:
    rules = meta.get("rules")
    out = [r for r in rules if isinstance(r, dict)] if isinstance(rules, list) else []
    if meta.get("reason_detail"):
        out.append({"code": "generation", "detail": meta["reason_detail"]})
    return out


def _dedup_nearest(meta: dict[str, Any]) -> int | None:
    dedup = meta.get("dedup")
    if isinstance(dedup, dict) and isinstance(dedup.get("nearest"), int):
        return int(dedup["nearest"])
    return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def dedup_cutoff(meta: dict[str, Any]) -> float | None:
    """The search cutoff of the dedup run that stored the record's `nn_score`: its threshold (the index
    searches no lower, see `app.pipeline.rouge.NearDuplicateIndex`). None when unknown (exact-duplicate
    findings, scores from elsewhere)."""
    dedup = meta.get("dedup")
    return _number(dedup.get("threshold")) if isinstance(dedup, dict) else None


# Generation kinds whose ROUGE-L filter stores the record's nn_score (kept records too); the job's
# `threshold` param is that filter's search cutoff.
ROUGE_GENERATION_KINDS = ("self_instruct",)


def _job_cutoff(kind: str, params: dict[str, Any] | None) -> float | None:
    return _number((params or {}).get("threshold")) if kind in ROUGE_GENERATION_KINDS else None


def generation_cutoffs(
    db: Session, *, dataset_id: int | None = None, job_ids: Iterable[int] = ()
) -> dict[int, float]:
    """Job id -> the ROUGE-L threshold of a generation job that stores nearest-neighbour figures: the jobs
    given, or all of a dataset's."""
    query = select(Job.id, Job.kind, Job.params).where(Job.kind.in_(ROUGE_GENERATION_KINDS))
    if dataset_id is not None:
        query = query.where(Job.dataset_id == dataset_id)
    else:
        query = query.where(Job.id.in_(list(job_ids)))
    out: dict[int, float] = {}
    for job_id, kind, params in db.execute(query).tuples():
        cutoff = _job_cutoff(kind, params)
        if cutoff is not None:
            out[job_id] = cutoff
    return out


def nn_cutoff(record: Record, job_cutoffs: Mapping[int, float]) -> float | None:
    """The search cutoff behind the record's stored figure: the dedup run's when one stored it (its
    `meta["dedup"]`), else that of the generation job whose ROUGE-L filter did."""
    meta = record.meta or {}
    if "dedup" in meta:
        return dedup_cutoff(meta)
    return job_cutoffs.get(record.job_id) if record.job_id is not None else None


def nn_finding(
    record: Record, job_cutoffs: Mapping[int, float] | None = None
) -> tuple[NnStatus, float | None]:
    """What the record's stored nearest-neighbour figure is, and the cutoff it was searched at.

    * ``not_compared``: no ROUGE-L check (dedup job or generation) has looked at it (`nn_score` is NULL);
    * ``below_cutoff``: compared, and no record kept before it reached the cutoff. The index only
      searches at or above its cutoff, so the stored 0.0 (or a partial figure it met on the way) is no
      measurement of the nearest neighbour and must not be shown or counted as one;
    * ``found``: a real score to `nn_record_id` (at or above the cutoff, or an exact duplicate).

    `job_cutoffs` (`generation_cutoffs`) gives the cutoff of figures stored by generation.
    `app.review.insights.dataset_stats` applies the same rule in SQL."""
    score = record.nn_score
    if score is None:
        return "not_compared", None
    cutoff = nn_cutoff(record, job_cutoffs or {})
    if score <= 0 or (cutoff is not None and score < cutoff):
        return "below_cutoff", cutoff
    return "found", cutoff


def none_label(cutoffs: set[float | None]) -> str:
    """The histogram bucket of records compared with no neighbour at or above the cutoff: "none ≥ 0.70"
    when they all share one known cutoff, else "none ≥ cutoff"."""
    if len(cutoffs) == 1:
        (cutoff,) = cutoffs
        if cutoff is not None:
            return f"none ≥ {cutoff:.2f}"
    return "none ≥ cutoff"


def _advice(meta: dict[str, Any]) -> list[Advice]:
    stored = meta.get("advice")
    if not isinstance(stored, dict):
        return []
    return [
        Advice(kind=str(kind), reason=str(v.get("reason")), detail=v.get("detail"), job_id=v.get("job_id"))
        for kind, v in stored.items()
        if isinstance(v, dict) and v.get("reason")
    ]


def _prompt_text(record: Record) -> str:
    if record.instruction or not record.messages:
        return f"{record.instruction}\n{record.input}".strip()
    return next((str(m.get("content", "")) for m in record.messages if m.get("role") == "user"), "")


_INDEXED: dict[str, bool] = {}


def reverse_lookup_indexed(db: Session) -> bool:
    """Whether records can be found by `nn_record_id` through an index. Without one, "which records
    found this one as their nearest neighbour" scans the whole dataset (~70 ms at 100k records), too slow
    for every review action, so the review page then shows only the forward neighbours and the parent."""
    bind = db.get_bind()
    key = str(bind.engine.url)
    if key not in _INDEXED:
        from sqlalchemy import inspect

        _INDEXED[key] = any(
            "nn_record_id" in (ix.get("column_names") or [])[:2]
            for ix in inspect(bind).get_indexes(Record.__tablename__)
        )
    return _INDEXED[key]


def review_items(
    *, db: Session, rows: Sequence[Record], assigned: bool = False, viewer: int | None = None
) -> list[ReviewItem]:
    """Records with their provenance, curation findings and nearest neighbours, loaded in a few batched
    queries (never one per record). Neighbours come from a bounded set: the nearest one the dedup job
    found, the records that point at this one (when that lookup is indexed), and the parent, each scored
    with exact ROUGE-L."""
    from app.pipeline.rouge import rouge_l

    if not rows:
        return []
    ids = [r.id for r in rows]
    dataset_id = rows[0].dataset_id
    wanted: set[int] = set()
    for r in rows:
        for rid in (r.nn_record_id, _dedup_nearest(r.meta or {}), r.parent_id):
            if rid is not None:
                wanted.add(rid)
    pointing: dict[int, list[Record]] = {}
    if reverse_lookup_indexed(db):
        for other in db.scalars(
            select(Record)
            .where(Record.dataset_id == dataset_id, Record.nn_record_id.in_(ids))
            .order_by(Record.nn_score.desc())
            .limit(10 * len(ids))
        ):
            if other.nn_record_id is not None:
                pointing.setdefault(other.nn_record_id, []).append(other)
    known = {r.id: r for r in rows}
    missing = wanted - set(known)
    if missing:
        known.update({r.id: r for r in db.scalars(select(Record).where(Record.id.in_(missing)))})
    job_ids = {r.job_id for r in rows if r.job_id is not None}
    kinds: dict[int, str] = {}
    job_cutoffs: dict[int, float] = {}
    if job_ids:
        for job_id, kind, params in db.execute(
            select(Job.id, Job.kind, Job.params).where(Job.id.in_(job_ids))
        ):
            kinds[job_id] = kind
            if (cutoff := _job_cutoff(kind, params)) is not None:
                job_cutoffs[job_id] = cutoff
    items = []
    prefs = review_preferences(db, ids, viewer) if viewer is not None else {}
    for r in rows:
        meta = r.meta or {}
        text = _prompt_text(r)
        neighbours: list[Neighbour] = []
        seen: set[int] = {r.id}
        candidates: list[tuple[Record, str]] = []
        for rid in (r.nn_record_id, _dedup_nearest(meta)):
            if rid is not None and rid in known:
                candidates.append((known[rid], "nearest"))
        candidates += [(o, "points_here") for o in pointing.get(r.id, [])[:5]]
        if r.parent_id is not None and r.parent_id in known:
            candidates.append((known[r.parent_id], "parent"))
        for other, relation in candidates:
            if other.id in seen:
                continue
            seen.add(other.id)
            neighbours.append(
                Neighbour(
                    id=other.id,
                    score=round(rouge_l(text, _prompt_text(other)), 4),
                    instruction=_prompt_text(other)[:500],
                    status=other.status,
                    relation=relation,
                )
            )
        neighbours.sort(key=lambda n: -n.score)
        parent = known.get(r.parent_id) if r.parent_id is not None else None
        labels = meta.get("labels")
        nn_status, cutoff = nn_finding(r, job_cutoffs)
        items.append(
            ReviewItem(
                id=r.id,
                dataset_id=r.dataset_id,
                version=r.version,
                instruction=r.instruction,
                input=r.input,
                output=r.output,
                system=r.system,
                messages=r.messages,
                status=r.status,
                rating=r.rating,
                tags=list(r.tags or []),
                flagged=r.flagged,
                assigned=assigned,
                provenance=Provenance(
                    source=r.source,
                    teacher_model=r.teacher_model,
                    job_id=r.job_id,
                    job_kind=kinds.get(r.job_id) if r.job_id is not None else None,
                    parent_id=r.parent_id,
                    parent_instruction=_prompt_text(parent)[:500] if parent is not None else None,
                    operation=str(meta["operation"]) if meta.get("operation") else None,
                    round=meta["round"] if isinstance(meta.get("round"), int) else None,
                    prompt_hash=r.prompt_hash,
                ),
                machine=Machine(
                    reason=r.reason,
                    rules=_rules(meta),
                    judge_score=r.judge_score,
                    judge_rationale=_judge_rationale(meta),
                    nn_score=r.nn_score,
                    nn_record_id=r.nn_record_id,
                    nn_status=nn_status,
                    nn_cutoff=cutoff,
                    label=r.label,
                    is_classification=r.is_classification,
                    labels=[str(x) for x in labels] if isinstance(labels, list) else [],
                    human_decided=r.human_decided,
                    advice=_advice(meta),
                ),
                neighbours=neighbours,
                **_preference_fields(prefs.get(r.id)),
            )
        )
    return items


def _preference_fields(found: Any) -> dict[str, Any]:
    if found is None:
        return {}
    candidates, mine, advice = found
    return {"candidates": candidates, "my_preference": mine, "preference_advice": advice}


def queue(
    *,
    db: Session,
    user: User,
    dataset_id: int,
    after_id: int | None = None,
    limit: int = 5,
    compare: bool = False,
) -> list[ReviewItem]:
    """The next records to review, with everything the review page shows beside them."""
    require_dataset(db=db, user=user, dataset_id=dataset_id)
    rows, assigned = queue_records(
        db=db, user=user, dataset_id=dataset_id, after_id=after_id, limit=limit, compare=compare
    )
    return review_items(db=db, rows=rows, assigned=assigned, viewer=user.id)


def opening_items(
    *, db: Session, user: User, dataset_id: int, record_id: int | None, limit: int, compare: bool = False
) -> list[ReviewItem]:
    """What the review page opens with: the record asked for and the queue after it, else the queue."""
    if record_id is None:
        return queue(db=db, user=user, dataset_id=dataset_id, limit=limit, compare=compare)
    one = records.get_record(db=db, user=user, record_id=record_id)
    if one.dataset_id != dataset_id:
        raise NotFound(f"record {record_id} not found")
    items = review_items(db=db, rows=[one], viewer=user.id)
    return items + queue(
        db=db, user=user, dataset_id=dataset_id, after_id=one.id, limit=limit, compare=compare
    )


# ---------------------------------------------------------------- decisions


def _conflict(record: Record, version: int) -> Conflict:
    return Conflict(
        f"record {record.id} was changed by someone else since you loaded it (your version {version}, "
        f"now {record.version}); reload it to see their change",
        current_version=record.version,
    )


def _resolve_votes(db: Session, record: Record) -> None:
    """When every assigned annotator has voted: a unanimous vote sets the status, a split one is
    flagged for a curator with who voted what."""
    votes = db.execute(
        select(User.username, RecordAssignment.done, RecordAssignment.decision)
        .join(User, User.id == RecordAssignment.user_id)
        .where(RecordAssignment.record_id == record.id)
    ).all()
    if not votes or not all(done and decision for _, done, decision in votes):
        return
    decisions = {str(decision) for _, _, decision in votes}
    if len(decisions) == 1:
        record.status = decisions.pop()
        record.reason = "consensus" if len(votes) > 1 else "human"
        record.reviewed_at = utcnow()
    else:
        record.flagged = True
        record.meta = {**(record.meta or {}), "disagreement": {u: d for u, _, d in votes}}
    record.version += 1


def decide(
    *,
    db: Session,
    user: User,
    record_id: int,
    action: str,
    version: int,
    reason: str | None = None,
    rating: int | None = None,
    tags: list[str] | None = None,
    note: str = "",
) -> Record:
    """Apply one review action, timestamped as a ReviewEvent whose before/after lets undo restore it.

    A record assigned to this user takes accept/reject/rate as the user's vote (several annotators vote
    on the same record, so no version check); everything else needs the version the client loaded."""
    record = records.get_record(db=db, user=user, record_id=record_id, for_update=True)
    assignment = db.get(RecordAssignment, (record_id, user.id))
    vote = assignment is not None and action in ("accept", "reject", "rate")
    if not vote and action != "skip" and version != record.version:
        raise _conflict(record, version)
    before = state_of(record)
    before_assignment = (
        {"done": assignment.done, "decision": assignment.decision, "rating": assignment.rating}
        if assignment is not None
        else None
    )
    now = utcnow()
    if vote and assignment is not None:
        if action == "rate":
            if rating is None:
                raise Invalid("rate needs a rating from 1 to 5", field="rating")
            assignment.rating = rating
        else:
            assignment.done = True
            assignment.decision = VOTES[action]
            record.reviewed_by = user.id
            db.flush()
            _resolve_votes(db, record)
    elif action in VOTES:
        record.status = VOTES[action]
        record.reason = reason or "human"
        record.reviewed_by = user.id
        record.reviewed_at = now
        record.locked_by = None
        record.locked_until = None
        record.version += 1
    elif action == "rate":
        if rating is None:
            raise Invalid("rate needs a rating from 1 to 5", field="rating")
        record.rating = rating
        record.version += 1
    elif action == "tag":
        records.set_tags(db=db, record=record, tags=tags or [])
        record.version += 1
    elif action == "flag":
        record.flagged = True
        record.meta = {
            **(record.meta or {}),
            "flag": {"by": user.username, "at": now.isoformat(), "note": note},
        }
        record.version += 1
    elif action != "skip":
        raise Invalid(f"unknown review action {action!r}", field="action")
    if action in ("accept", "reject", "rate"):
        record.human_decided = True  # a vote counts too: a person has weighed in on this record
    after = state_of(record)
    if assignment is not None:
        before["assignment"] = before_assignment
        after["assignment"] = {
            "done": assignment.done,
            "decision": assignment.decision,
            "rating": assignment.rating,
        }
    records.add_event(db=db, record=record, user=user, action=action, before=before, after=after, at=now)
    if action != "skip":  # a skip changes nothing
        audit.record(
            db=db,
            user_id=user.id,
            action=f"review.{action}",
            entity_type="record",
            entity_id=record.id,
            dataset_id=record.dataset_id,
            detail={"version": record.version},
            before=before,
            after=after,
        )
    db.flush()
    return record


def decide_and_prefetch(*, db: Session, user: User, record_id: int, decision: DecisionIn) -> DecisionOut:
    """Apply one decision and return the record with the next ones asked for: one request per keystroke."""
    record = decide(
        db=db,
        user=user,
        record_id=record_id,
        action=decision.action,
        version=decision.version,
        reason=decision.reason,
        rating=decision.rating,
        tags=decision.tags,
        note=decision.note,
    )
    nxt = (
        queue(
            db=db,
            user=user,
            dataset_id=record.dataset_id,
            after_id=decision.prefetch_after,
            limit=decision.prefetch,
            compare=decision.compare,
        )
        if decision.prefetch
        else []
    )
    return DecisionOut(record=record_state(record), next=nxt)


# ---------------------------------------------------------------- undo


def _restore(record: Record, state: dict[str, Any]) -> None:
    for key in ("status", "reason", "rating", "label", "flagged", "reviewed_by", "human_decided"):
        if key in state:
            setattr(record, key, state[key])
    if "reviewed_at" in state:
        value = state["reviewed_at"]
        record.reviewed_at = datetime.fromisoformat(value) if value else None


def _same(record: Record, state: dict[str, Any]) -> bool:
    current = state_of(record)
    return all(current[k] == state[k] for k in ("status", "rating", "flagged") if k in state) and (
        "tags" not in state or sorted(current["tags"]) == sorted(state["tags"])
    )


def _undo_edit(db: Session, user: User, record: Record) -> None:
    revs = db.scalars(
        select(RecordRevision)
        .where(RecordRevision.record_id == record.id)
        .order_by(RecordRevision.version.desc())
        .limit(2)
    ).all()
    if len(revs) < 2 or revs[0].version != record.version or revs[0].edited_by != user.id:
        raise Conflict(f"record {record.id} was edited again since; open its history to revert by hand")
    previous = revs[1]
    for field in records.CONTENT_FIELDS:
        setattr(record, field, getattr(previous, field))
    record.version += 1
    db.add(
        RecordRevision(
            record_id=record.id,
            version=record.version,
            edited_by=user.id,
            note=f"undo of version {revs[0].version}",
            **records.content_of(record),
        )
    )


def undo_last(*, db: Session, user: User, dataset_id: int) -> tuple[ReviewEvent, Record]:
    """Undo the user's most recent decision in the dataset (repeat to go further back): a misclick never
    costs a record. Refused with 409 if someone else changed the record since."""
    require_dataset(db=db, user=user, dataset_id=dataset_id)
    event = db.scalar(
        select(ReviewEvent)
        .where(
            ReviewEvent.dataset_id == dataset_id,
            ReviewEvent.user_id == user.id,
            ReviewEvent.undone.is_(False),
            ReviewEvent.action != "undo",
        )
        .order_by(ReviewEvent.at.desc(), ReviewEvent.id.desc())
        .limit(1)
    )
    if event is None:
        raise NotFound("nothing to undo")
    record = records.get_record(db=db, user=user, record_id=event.record_id, for_update=True)
    assignment_before = (event.before or {}).get("assignment")
    if event.action == "edit":
        _undo_edit(db, user, record)
    elif event.action != "skip":
        if not _same(record, event.after or {}):
            raise Conflict(
                f"record {record.id} was changed by someone else after your {event.action}; "
                "reload it and decide again"
            )
        _restore(record, event.before or {})
        if "tags" in (event.before or {}) and sorted(record.tags or []) != sorted(event.before["tags"]):
            records.set_tags(db=db, record=record, tags=list(event.before["tags"]))
        record.version += 1
    if isinstance(assignment_before, dict):
        assignment = db.get(RecordAssignment, (record.id, user.id))
        if assignment is not None:
            assignment.done = bool(assignment_before.get("done"))
            assignment.decision = assignment_before.get("decision")
            assignment.rating = assignment_before.get("rating")
    event.undone = True
    records.add_event(
        db=db,
        record=record,
        user=user,
        action="undo",
        before={"undone_event": event.id, "action": event.action},
        after=state_of(record),
    )
    audit.record(
        db=db,
        user_id=user.id,
        action="review.undo",
        entity_type="record",
        entity_id=record.id,
        dataset_id=record.dataset_id,
        detail={"undone": event.action, "event": event.id, "version": record.version},
        before=event.after or {},
        after=state_of(record),
    )
    db.flush()
    return event, record


# ---------------------------------------------------------------- edits and history


def edit(*, db: Session, user: User, record_id: int, change: EditIn) -> Record:
    """Save an in-place edit as a new revision (the 409 of a stale version is never a lost edit)."""
    return records.update_record(
        db=db,
        user=user,
        record_id=record_id,
        change=RecordUpdate(
            version=change.version,
            instruction=change.instruction,
            input=change.input,
            output=change.output,
            messages=change.messages,
            note=change.note,
        ),
    )


def _text_diff(old: str, new: str) -> list[DiffPart]:
    """A word-level diff (whitespace kept), readable for prose and code alike."""
    a = re.findall(r"\s+|\w+|[^\w\s]", old)
    b = re.findall(r"\s+|\w+|[^\w\s]", new)
    parts: list[DiffPart] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag == "equal":
            parts.append(DiffPart(op="equal", text="".join(a[i1:i2])))
            continue
        if i2 > i1:
            parts.append(DiffPart(op="delete", text="".join(a[i1:i2])))
        if j2 > j1:
            parts.append(DiffPart(op="insert", text="".join(b[j1:j2])))
    return parts


def _field_texts(rev: RecordRevision) -> dict[str, str]:
    texts = {f: getattr(rev, f) or "" for f in CONTENT_TEXT_FIELDS}
    for i, turn in enumerate(rev.messages or []):
        texts[f"turn {i + 1} ({turn.get('role', '?')})"] = str(turn.get("content", ""))
    return texts


def _usernames(db: Session, ids: Iterable[int | None]) -> dict[int, str]:
    wanted = {i for i in ids if i is not None}
    if not wanted:
        return {}
    return dict(db.execute(select(User.id, User.username).where(User.id.in_(wanted))).tuples().all())


def _machine_author(note: str) -> str | None:
    """Who wrote a revision no person edited: a rewrite job's note names its teacher, model and job
    ("rewrite by teacher fake (fake-model), job 12: format"); the original has no author."""
    if not note.startswith("rewrite by "):
        return None
    return note.removeprefix("rewrite by ").split(":", 1)[0]


def _revision_diffs(db: Session, revs: Sequence[RecordRevision]) -> list[tuple[datetime, RevisionDiff]]:
    """Every revision after the original, oldest first, with the diff of each field it changed."""
    names = _usernames(db, (r.edited_by for r in revs))
    out: list[tuple[datetime, RevisionDiff]] = []
    for prev, rev in pairwise(revs):
        old, new = _field_texts(prev), _field_texts(rev)
        changes = {
            field: _text_diff(old.get(field, ""), new.get(field, ""))
            for field in dict.fromkeys([*old, *new])
            if old.get(field, "") != new.get(field, "")
        }
        diff = RevisionDiff(
            version=rev.version,
            edited_by=names.get(rev.edited_by) if rev.edited_by else _machine_author(rev.note),
            edited_at=rev.edited_at.isoformat(timespec="seconds"),
            note=rev.note,
            changes=changes,
        )
        out.append((rev.edited_at, diff))
    return out


def history(*, db: Session, user: User, record_id: int) -> list[RevisionDiff]:
    """Every revision after the original, newest first, as who changed what (a diff per changed field)."""
    revs = records.revisions(db=db, user=user, record_id=record_id)
    return [diff for _, diff in reversed(_revision_diffs(db, revs))]


# The reviewable fields a decision can change, in the order a history line names them.
DECISION_FIELDS = ("status", "rating", "tags", "label", "flagged")


def _shown(value: Any) -> str:
    if value is None or value == []:
        return "—"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def decision_summary(action: str, before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    """A decision's effect in words, from the before/after states its ReviewEvent keeps."""
    if action == "undo":
        return f"undid {before.get('action', 'a decision')}"
    parts: list[str] = []
    vote = after.get("assignment")
    if isinstance(vote, dict) and vote != before.get("assignment"):
        if vote.get("rating") is not None and vote.get("rating") != (before.get("assignment") or {}).get(
            "rating"
        ):
            parts.append(f"rated {vote['rating']} (their vote)")
        if vote.get("decision"):
            parts.append(f"voted {vote['decision']}")
    for key in DECISION_FIELDS:
        old, new = before.get(key), after.get(key)
        if key not in after or old == new or (key == "tags" and sorted(old or []) == sorted(new or [])):
            continue
        if key == "flagged":
            parts.append("flagged for a curator" if new else "flag cleared")
        else:
            parts.append(f"{key} {_shown(old)} → {_shown(new)}")
    reason = after.get("reason")
    if reason and reason != "human" and (reason != before.get("reason") or action in VOTES):
        parts.append(f"reason: {reason}")
    return "; ".join(parts) or "no change (it was already so)"


def _decision_entries(db: Session, record_id: int) -> list[tuple[datetime, HistoryEntry]]:
    """The record's decisions from its ReviewEvents. Skips change nothing and are left out; an edit's event
    shows only when the same request also changed status, rating, tags or label (its text is a revision)."""
    events = db.scalars(
        select(ReviewEvent)
        .where(ReviewEvent.record_id == record_id, ReviewEvent.action != "skip")
        .order_by(ReviewEvent.at, ReviewEvent.id)
    ).all()
    names = _usernames(db, (e.user_id for e in events))
    out: list[tuple[datetime, HistoryEntry]] = []
    for event in events:
        before, after = event.before or {}, event.after or {}
        if event.action == "edit" and all(before.get(k) == after.get(k) for k in DECISION_FIELDS):
            continue
        entry = HistoryEntry(
            kind="decision",
            action=event.action,
            at=event.at.isoformat(timespec="seconds"),
            by=names.get(event.user_id) if event.user_id is not None else None,
            summary=decision_summary(event.action, before, after),
            undone=event.undone,
        )
        out.append((event.at, entry))
    return out


# How far apart a record's reviewed_at and the event that set it can be (a vote resolves after its event).
EVENT_SLACK = timedelta(seconds=1)
# Decisions that leave reviewed_at as it was (an undo puts back the time of the decision it undoes).
NOT_REVIEWING = frozenset({"rate", "tag", "flag", "undo", "update"})


def _bulk_entry(
    db: Session, record: Record, decisions: list[tuple[datetime, HistoryEntry]]
) -> tuple[datetime, HistoryEntry] | None:
    """Bulk and group status changes (`records.bulk_set_status`) write one audit entry for the whole
    filter and no event per record, so the record's own reviewed_by / reviewed_at are their only trace
    here: shown when no decision of this record explains them (the latest such change only)."""
    at = record.reviewed_at
    setters = [t for t, e in decisions if e.action not in NOT_REVIEWING]
    if at is None or not record.human_decided or any(abs(t - at) <= EVENT_SLACK for t in setters):
        return None
    entry = HistoryEntry(
        kind="decision",
        action="bulk",
        at=at.isoformat(timespec="seconds"),
        by=_usernames(db, [record.reviewed_by]).get(record.reviewed_by) if record.reviewed_by else None,
        summary=f"status set to {record.status} (reason: {record.reason or '—'}) by a bulk action",
    )
    return at, entry


def timeline(*, db: Session, user: User, record_id: int) -> list[HistoryEntry]:
    """A record's whole history, newest first: its text edits (as diffs) and every decision and rating
    people made on it (accept, reject, rate, tag, flag, votes, undo, the latest bulk change), each with
    who and when."""
    record = records.get_record(db=db, user=user, record_id=record_id)
    revs = records.revisions(db=db, user=user, record_id=record_id)
    entries = _decision_entries(db, record_id)
    if (bulk := _bulk_entry(db, record, entries)) is not None:
        entries.append(bulk)
    entries += judgment_entries(db, record_id)
    for at, diff in _revision_diffs(db, revs):
        summary = f"edited {', '.join(diff.changes) or 'nothing'}"
        entries.append(
            (
                at,
                HistoryEntry(
                    kind="edit",
                    action="edit",
                    at=diff.edited_at,
                    by=diff.edited_by,
                    summary=summary,
                    note=diff.note,
                    version=diff.version,
                    changes=diff.changes,
                ),
            )
        )
    # Stable sort on the time alone: an edit and a decision of the same instant keep the order above.
    entries.sort(key=lambda pair: pair[0], reverse=True)
    return [entry for _, entry in entries]


# ---------------------------------------------------------------- assignments


def assign(
    *,
    db: Session,
    user: User,
    dataset_id: int,
    user_ids: Iterable[int],
    k: int,
    flt: RecordFilter,
    limit: int,
) -> tuple[int, int]:
    """Assign each matching record to k of the given annotators, round-robin so the load is even.
    Existing assignments are kept. Returns (records, new assignments)."""
    dataset: Dataset = require_dataset(db=db, user=user, dataset_id=dataset_id, min_role=Role.curator.value)
    people = sorted(set(user_ids))
    members = set(
        db.scalars(
            select(ProjectMember.user_id).where(
                ProjectMember.project_id == dataset.project_id, ProjectMember.user_id.in_(people)
            )
        )
    )
    outsiders = [u for u in people if u not in members]
    if outsiders:
        raise Invalid(f"users {outsiders} are not members of project {dataset.project_id}", field="user_ids")
    if k > len(people):
        raise Invalid(f"k={k} needs at least {k} annotators; {len(people)} given", field="k")
    ids = db.scalars(
        select(Record.id)
        .where(and_(*records.filter_clauses(dataset_id, flt)))
        .order_by(Record.id)
        .limit(limit)
    ).all()
    rows = [
        {"record_id": rid, "user_id": people[(i * k + j) % len(people)], "dataset_id": dataset_id}
        for i, rid in enumerate(ids)
        for j in range(k)
    ]
    created = 0
    for start in range(0, len(rows), 5000):
        stmt = insert_ignoring(db, RecordAssignment).values(rows[start : start + 5000])
        created += len(db.execute(stmt.returning(RecordAssignment.record_id)).all())
    audit.record(
        db=db,
        user_id=user.id,
        action="assignment.create",
        entity_type="dataset",
        entity_id=dataset_id,
        project_id=dataset.project_id,
        detail={"user_ids": people, "k": k, "records": len(ids), "assignments": created},
    )
    return len(ids), created
