from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from app.audit.models import AuditLog
from app.audit.service import MAX_PAGE


class AuditQuery(BaseModel):
    """Filters of GET /audit; all optional, all combined."""

    actor: str | None = Field(None, max_length=100, description="Username of the actor (any case).")
    actor_id: int | None = None
    project_id: int | None = None
    action: str | None = Field(
        None, max_length=64, description='Exact, or a family ending in "." or "*" (auth.* is every login).'
    )
    entity_type: str | None = Field(None, max_length=32)
    entity_id: str | None = Field(None, max_length=64)
    since: datetime | None = Field(None, description="From this time (inclusive).")
    until: datetime | None = Field(None, description="Before this time.")
    before_id: int | None = Field(None, description="The previous page's `next_before_id`.")
    limit: int = Field(100, ge=1, le=MAX_PAGE)


class AuditRead(BaseModel):
    id: int
    at: datetime
    user_id: int | None = Field(description="The actor; null for the system or a login of no known account.")
    username: str | None
    action: str
    entity_type: str
    entity_id: str
    project_id: int | None
    detail: dict[str, Any] = Field(description="`before` and `after` hold the fields that changed.")

    @classmethod
    def of(cls, entry: AuditLog, username: str | None) -> AuditRead:
        return cls(
            id=entry.id,
            at=entry.at,
            user_id=entry.user_id,
            username=username,
            action=entry.action,
            entity_type=entry.entity_type,
            entity_id=entry.entity_id,
            project_id=entry.project_id,
            detail=entry.detail,
        )


class AuditPage(BaseModel):
    items: list[AuditRead]
    next_before_id: int | None = Field(description="Pass as `before_id` for the next (older) page.")
