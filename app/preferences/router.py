"""Candidates of a record and people's judgments over them: what the pairwise / ranking review builds on."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.deps import CurrentUser, SessionDep
from app.preferences import service
from app.preferences.models import Candidate, PreferenceJudgment
from app.preferences.schemas import (
    CandidateCreate,
    CandidateRead,
    JudgmentRead,
    PairwiseCreate,
    RankingCreate,
    RecordCandidates,
)
from app.records.service import get_record

router = APIRouter(tags=["preferences"])


@router.get("/records/{record_id}/candidates", response_model=RecordCandidates)
def record_candidates(
    record_id: int,
    user: CurrentUser,
    db: SessionDep,
    history: Annotated[bool, Query(description="Also the superseded judgments.")] = False,
) -> RecordCandidates:
    """The record's candidate responses and the judgments over them (people's and judges')."""
    record = get_record(db=db, user=user, record_id=record_id)
    judgments = service.judgments_of(db=db, record_ids=[record.id], include_superseded=history)
    return RecordCandidates(
        record_id=record.id,
        candidates=[
            CandidateRead.model_validate(c) for c in service.list_candidates(db=db, record_id=record.id)
        ],
        judgments=[JudgmentRead.model_validate(j) for j in judgments.get(record.id, [])],
    )


@router.post("/records/{record_id}/candidates", response_model=CandidateRead, status_code=201)
def add_candidate(record_id: int, body: CandidateCreate, user: CurrentUser, db: SessionDep) -> Candidate:
    """A person's own answer, added as a candidate (source 'person')."""
    return service.add_person_candidate(
        db=db,
        user=user,
        record=get_record(db=db, user=user, record_id=record_id),
        content=body.content,
        note=body.note,
    )


@router.post("/records/{record_id}/candidates/original", response_model=CandidateRead, status_code=201)
def add_original(record_id: int, user: CurrentUser, db: SessionDep) -> Candidate:
    """The record's own answer (its current version) as a candidate, so it can be compared; idempotent."""
    return service.require_original(db=db, record=get_record(db=db, user=user, record_id=record_id))


@router.post("/records/{record_id}/judgments/pairwise", response_model=JudgmentRead, status_code=201)
def judge_pair(record_id: int, body: PairwiseCreate, user: CurrentUser, db: SessionDep) -> PreferenceJudgment:
    """A person's choice between two candidates; it supersedes the same person's earlier choice on them."""
    record = get_record(db=db, user=user, record_id=record_id, for_update=True)
    return service.record_pairwise(
        db=db,
        user=user,
        record=record,
        a_id=body.a_id,
        b_id=body.b_id,
        choice=body.choice,
        rationale=body.rationale,
    )


@router.post("/records/{record_id}/judgments/ranking", response_model=JudgmentRead, status_code=201)
def rank(record_id: int, body: RankingCreate, user: CurrentUser, db: SessionDep) -> PreferenceJudgment:
    """A person's full ranking, best first, ties as groups; it supersedes the same person's earlier one."""
    record = get_record(db=db, user=user, record_id=record_id, for_update=True)
    return service.record_ranking(
        db=db, user=user, record=record, ranking=body.ranking, rationale=body.rationale
    )
