"""The audit log: who changed what, in which project, and what it was before.

Every state change appends one entry in the transaction of the change itself, so an entry exists exactly
when its change does. An entry names its actor (`user_id`; None for the system or a login of no known
account), its project, its target (`entity_type`, `entity_id`) and, in `detail`, what changed: `before`
and `after` hold only the fields that changed, and other keys add context (a filter, a count, a client
address). Failed logins are recorded too: their attempt commits although the request fails.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from app.audit.models import AuditLog
from app.auth.models import Role, User
from app.datasets.models import Dataset
from app.errors import Forbidden

MAX_PAGE = 500


def changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{"before": {...}, "after": {...}} of the keys whose values differ (both empty when nothing did)."""
    keys = [k for k in dict.fromkeys([*before, *after]) if before.get(k) != after.get(k)]
    return {"before": {k: before.get(k) for k in keys}, "after": {k: after.get(k) for k in keys}}


def record(
    *,
    db: Session,
    user_id: int | None,
    action: str,
    entity_type: str,
    entity_id: int | str,
    project_id: int | None = None,
    dataset_id: int | None = None,
    detail: dict[str, Any] | None = None,
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
) -> None:
    """Append an audit entry in the caller's transaction (so it exists iff the change does).

    With `before` and `after`, the entry keeps the fields that differ between them (see `changes`). A
    `dataset_id` goes into the detail and, unless `project_id` is given, names the entry's project."""
    full = dict(detail or {})
    if dataset_id is not None:
        full["dataset_id"] = dataset_id
        if project_id is None:
            dataset = db.get(Dataset, dataset_id)  # the caller has loaded it to authorise: no query
            project_id = dataset.project_id if dataset is not None else None
    if before is not None or after is not None:
        full.update(changes(before or {}, after or {}))
    db.add(
        AuditLog(
            user_id=user_id,
            action=action,
            entity_type=entity_type,
            entity_id=str(entity_id)[:64],
            project_id=project_id,
            detail=full,
        )
    )


def search(
    *,
    db: Session,
    user: User,
    actor: str | None = None,
    actor_id: int | None = None,
    project_id: int | None = None,
    action: str | None = None,
    entity_type: str | None = None,
    entity_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> tuple[Sequence[tuple[AuditLog, str | None]], int | None]:
    """Entries newest first, with their actor's name, and the `before_id` of the next page (None at the end).

    `action` ending in "." or "*" matches a family ("auth." is every login, logout and failure); `actor` is
    a username (any case). Pages are keyset pages on the id: stable while entries are appended. Admins only:
    the log names every account and what it did in every project."""
    if user.role != Role.admin.value:
        raise Forbidden("only admins read the audit log")
    limit = max(1, min(limit, MAX_PAGE))
    query: Select[AuditLog, str] = select(AuditLog, User.username).outerjoin(
        User, User.id == AuditLog.user_id
    )
    if actor:
        query = query.where(func.lower(User.username) == actor.strip().lower())
    if actor_id is not None:
        query = query.where(AuditLog.user_id == actor_id)
    if project_id is not None:
        query = query.where(AuditLog.project_id == project_id)
    if action:
        if action.endswith(("*", ".")):
            query = query.where(AuditLog.action.startswith(action.rstrip("*"), autoescape=True))
        else:
            query = query.where(AuditLog.action == action)
    if entity_type:
        query = query.where(AuditLog.entity_type == entity_type)
    if entity_id:
        query = query.where(AuditLog.entity_id == entity_id)
    if since is not None:
        query = query.where(AuditLog.at >= since)
    if until is not None:
        query = query.where(AuditLog.at < until)
    if before_id is not None:
        query = query.where(AuditLog.id < before_id)
    rows = db.execute(query.order_by(AuditLog.id.desc()).limit(limit + 1)).all()
    next_before = rows[limit - 1][0].id if len(rows) > limit else None
    return [(entry, name) for entry, name in rows[:limit]], next_before
