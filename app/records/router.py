from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Query

from app.deps import CurrentUser, SessionDep
from app.records import service
from app.records.models import Record, RecordRevision
from app.records.schemas import (
    BulkResult,
    BulkStatus,
    RecordPage,
    RecordQuery,
    RecordRead,
    RecordUpdate,
    RevisionRead,
)

router = APIRouter(tags=["records"])


@router.get("/datasets/{dataset_id}/records", response_model=RecordPage)
def list_records(
    dataset_id: int, query: Annotated[RecordQuery, Query()], user: CurrentUser, db: SessionDep
) -> RecordPage:
    """Records of a dataset, filtered, in id order, with an opaque cursor for the next page."""
    rows, next_cursor = service.list_records(
        db=db,
        user=user,
        dataset_id=dataset_id,
        flt=query.filter(),
        limit=query.limit,
        cursor=query.cursor,
        desc=query.desc,
    )
    return RecordPage(items=[RecordRead.model_validate(r) for r in rows], next_cursor=next_cursor)


@router.get("/records/{record_id}", response_model=RecordRead)
def get_record(record_id: int, user: CurrentUser, db: SessionDep) -> Record:
    return service.get_record(db=db, user=user, record_id=record_id)


@router.patch("/records/{record_id}", response_model=RecordRead)
def update_record(record_id: int, body: RecordUpdate, user: CurrentUser, db: SessionDep) -> Record:
    """Edit content, status, rating, tags or label. Send the version you loaded; a stale one gets 409."""
    return service.update_record(db=db, user=user, record_id=record_id, change=body)


@router.get("/records/{record_id}/revisions", response_model=list[RevisionRead])
def record_revisions(record_id: int, user: CurrentUser, db: SessionDep) -> Sequence[RecordRevision]:
    return service.revisions(db=db, user=user, record_id=record_id)


@router.post("/datasets/{dataset_id}/records/bulk-status", response_model=BulkResult)
def bulk_status(dataset_id: int, body: BulkStatus, user: CurrentUser, db: SessionDep) -> BulkResult:
    """Set the status of every record that matches the filter (the whole filter, not one page)."""
    count = service.bulk_set_status(
        db=db, user=user, dataset_id=dataset_id, flt=body.filter, status=body.status, reason=body.reason
    )
    return BulkResult(updated=count)
