from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.audit.models import AuditLog


def record(
    *,
    db: Session,
    user_id: int | None,
    action: str,
    entity_type: str,
    entity_id: int | str,
    project_id: int | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Append an audit entry in the caller's transaction (so it exists iff the change does)."""
    db.add(
        AuditLog(
            user_id=user_id,
            action=action,
            entity_type=entity_type,
            entity_id=str(entity_id),
            project_id=project_id,
            detail=detail or {},
        )
    )
