from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from app.deps import CurrentUser, SessionDep
from app.review import insights, service
from app.review.schemas import (
    AssignIn,
    AssignOut,
    BulkOut,
    DecisionIn,
    DecisionOut,
    EditIn,
    EditOut,
    GroupDecisionIn,
    HistoryEntry,
    QueuePage,
    RevisionDiff,
    UndoOut,
)

router = APIRouter(tags=["review"])


@router.get("/review/datasets/{dataset_id}/queue", response_model=QueuePage)
def review_queue(
    dataset_id: int,
    user: CurrentUser,
    db: SessionDep,
    after_id: int | None = None,
    limit: Annotated[int, Query(ge=1, le=50)] = 5,
    compare: Annotated[
        bool, Query(description="The records with candidates you have not judged yet, instead.")
    ] = False,
) -> QueuePage:
    """Your next records (your assignments, else the open pending queue), with provenance, curation
    findings and nearest neighbours. Records handed out are held for you for 15 minutes."""
    items = service.queue(
        db=db, user=user, dataset_id=dataset_id, after_id=after_id, limit=limit, compare=compare
    )
    return QueuePage(
        items=items, remaining_hint=service.open_assignments(db=db, user=user, dataset_id=dataset_id)
    )


@router.post("/review/records/{record_id}/decision", response_model=DecisionOut)
def decision(record_id: int, body: DecisionIn, user: CurrentUser, db: SessionDep) -> DecisionOut:
    """One keyboard action (accept, reject, rate, tag, skip, flag); the reply carries the next records,
    so an action is one request. A stale `version` gets 409."""
    return service.decide_and_prefetch(db=db, user=user, record_id=record_id, decision=body)


@router.post("/review/datasets/{dataset_id}/undo", response_model=UndoOut)
def undo(dataset_id: int, user: CurrentUser, db: SessionDep) -> UndoOut:
    """Undo your last decision in this dataset; call again to go further back."""
    event, record = service.undo_last(db=db, user=user, dataset_id=dataset_id)
    item = service.review_items(db=db, rows=[record], viewer=user.id)[0]
    return UndoOut(undone_action=event.action, item=item)


@router.post("/review/records/{record_id}/edit", response_model=EditOut)
def edit(record_id: int, body: EditIn, user: CurrentUser, db: SessionDep) -> EditOut:
    """Save an in-place edit as a revision; returns the history as diffs."""
    record = service.edit(db=db, user=user, record_id=record_id, change=body)
    return EditOut(
        record=service.record_state(record),
        history=service.history(db=db, user=user, record_id=record_id),
        timeline=service.timeline(db=db, user=user, record_id=record_id),
    )


@router.get("/review/records/{record_id}/history", response_model=list[RevisionDiff])
def history(record_id: int, user: CurrentUser, db: SessionDep) -> list[RevisionDiff]:
    """The record's text revisions as per-field diffs, newest first (decisions: see /timeline)."""
    return service.history(db=db, user=user, record_id=record_id)


@router.get("/review/records/{record_id}/timeline", response_model=list[HistoryEntry])
def timeline(record_id: int, user: CurrentUser, db: SessionDep) -> list[HistoryEntry]:
    """The record's whole history, newest first: edits with their diffs, and every decision people made
    on it (accept, reject, rate, tag, flag, votes, undo) with who and when."""
    return service.timeline(db=db, user=user, record_id=record_id)


@router.post("/review/datasets/{dataset_id}/assignments", response_model=AssignOut, status_code=201)
def assign(dataset_id: int, body: AssignIn, user: CurrentUser, db: SessionDep) -> AssignOut:
    """Assign the records matching the filter to k of the given annotators each."""
    n, created = service.assign(
        db=db,
        user=user,
        dataset_id=dataset_id,
        user_ids=body.user_ids,
        k=body.k,
        flt=body.filter,
        limit=body.limit,
    )
    return AssignOut(records=n, assignments=created)


@router.get("/review/datasets/{dataset_id}/stats")
def stats(dataset_id: int, user: CurrentUser, db: SessionDep) -> dict[str, Any]:
    """Counts and histograms. `nn_rouge` (nearest-neighbour ROUGE-L) starts with a "none ≥ 0.70" bucket:
    records the dedup job compared without finding any at or above its cutoff (`nn_rouge_none` gives its
    key, count and cutoffs); the deciles count real scores only; `nn_rouge_not_compared` counts records no
    dedup run has seen."""
    return insights.dataset_stats(db=db, user=user, dataset_id=dataset_id)


@router.get("/review/datasets/{dataset_id}/annotators")
def annotators(dataset_id: int, user: CurrentUser, db: SessionDep) -> list[dict[str, Any]]:
    """Per annotator: decisions, records per minute, assignment progress."""
    return [
        {**vars(s), "per_minute": s.per_minute}
        for s in insights.annotator_progress(db=db, user=user, dataset_id=dataset_id)
    ]


@router.get("/review/datasets/{dataset_id}/agreement")
def agreement(
    dataset_id: int, user: CurrentUser, db: SessionDep, judge_threshold: float = 4.0
) -> dict[str, Any]:
    return vars(insights.agreement(db=db, user=user, dataset_id=dataset_id, judge_threshold=judge_threshold))


@router.get("/review/datasets/{dataset_id}/duplicate-groups")
def duplicate_groups(
    dataset_id: int,
    user: CurrentUser,
    db: SessionDep,
    min_score: float = insights.GROUP_MIN_SCORE,
    limit: int = 50,
) -> list[dict[str, Any]]:
    return insights.duplicate_groups(
        db=db, user=user, dataset_id=dataset_id, min_score=min_score, limit=max(1, min(limit, 500))
    )


@router.post("/review/datasets/{dataset_id}/duplicate-groups/{anchor_id}", response_model=BulkOut)
def decide_group(
    dataset_id: int, anchor_id: int, body: GroupDecisionIn, user: CurrentUser, db: SessionDep
) -> BulkOut:
    """Accept or reject a near-duplicate group at once."""
    n = insights.decide_group(
        db=db,
        user=user,
        dataset_id=dataset_id,
        anchor_id=anchor_id,
        status=body.status,
        include_anchor=body.include_anchor,
        min_score=body.min_score,
    )
    return BulkOut(updated=n)


@router.get("/review/datasets/{dataset_id}/preference-pairs.jsonl", response_class=StreamingResponse)
def preference_pairs(dataset_id: int, user: CurrentUser, db: SessionDep) -> StreamingResponse:
    """DPO-ready JSONL, live (a snapshot's `dpo` export is the frozen one): one {prompt, chosen, rejected}
    per human-edited record, then the pairs of ranked candidates (people first, judges where no person
    decided), each with its `record_id` and, for rankings, `by` and the candidate ids."""
    # Materialise before streaming: the request's session closes when the handler returns.
    lines = list(insights.preference_jsonl(db=db, user=user, dataset_id=dataset_id))
    return StreamingResponse(
        iter(lines),
        media_type="application/jsonl",
        headers={"Content-Disposition": f'attachment; filename="dataset-{dataset_id}-dpo.jsonl"'},
    )
