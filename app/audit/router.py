from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.audit import service
from app.audit.schemas import AuditPage, AuditQuery, AuditRead
from app.deps import CurrentUser, SessionDep

router = APIRouter(tags=["audit"])


@router.get("/audit", response_model=AuditPage)
def search_audit(query: Annotated[AuditQuery, Query()], user: CurrentUser, db: SessionDep) -> AuditPage:
    """Who changed what, newest first (admins): filter by actor, project, action, entity and time."""
    rows, next_before = service.search(db=db, user=user, **query.model_dump())
    return AuditPage(items=[AuditRead.of(e, name) for e, name in rows], next_before_id=next_before)
