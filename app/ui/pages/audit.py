"""The audit log for admins: who changed what, filtered by actor, project, action, entity and time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response

from app.audit import service as audit
from app.deps import SessionDep
from app.errors import Invalid
from app.ui.web import HtmlRoute, PageUser, render

router = APIRouter(route_class=HtmlRoute, include_in_schema=False)
PAGE = 100
TEXT_FILTERS = ("actor", "action", "entity_type", "entity_id")


def _day(value: str, name: str) -> datetime | None:
    """A date (or date and time) from the form, in UTC."""
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise Invalid(f"{name}: use a date like 2026-12-01", field=name) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _number(value: str, name: str) -> int | None:
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise Invalid(f"{name} must be a number", field=name) from None


def _search_filters(q: dict[str, str]) -> dict[str, Any]:
    """audit.search's filters from the page's query; blank means any, and `until` takes a whole day."""
    until = _day(q.get("until", ""), "until")
    if until is not None and len(q["until"]) == 10:  # a date alone: through the end of that day
        until += timedelta(days=1)
    return {
        "actor": q.get("actor") or None,
        "project_id": _number(q.get("project_id", ""), "project_id"),
        "action": q.get("action") or None,
        "entity_type": q.get("entity_type") or None,
        "entity_id": q.get("entity_id") or None,
        "since": _day(q.get("since", ""), "since"),
        "until": until,
        "before_id": _number(q.get("before_id", ""), "before_id"),
    }


@router.get("/ui/audit")
def audit_page(request: Request, user: PageUser, db: SessionDep) -> Response:
    """Newest first, a page of 100; `until` takes a whole day (entries up to its end)."""
    q = {k: str(v).strip() for k, v in request.query_params.items()}
    rows, next_before = audit.search(db=db, user=user, limit=PAGE, **_search_filters(q))
    filters = {k: v for k, v in q.items() if k != "before_id" and v}
    older = f"/ui/audit?{urlencode({**filters, 'before_id': next_before})}" if next_before else None
    return render(request, "audit.html", user, rows=rows, filters=filters, older=older)
