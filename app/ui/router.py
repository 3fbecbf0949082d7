"""The web UI: server-rendered pages for annotators and curators. Every page is authorised with the same
service calls as the API; every form carries the session's CSRF token; writes made by page scripts go to the
JSON API with the X-CSRF-Token header. The pages live in `app/ui/pages/`, one module per group."""

from __future__ import annotations

from fastapi import APIRouter

from app.ui.pages import (
    account,
    audit,
    auth,
    datasets,
    evaluations,
    jobs,
    projects,
    review,
    snapshots,
    training,
)
from app.ui.web import HtmlRoute

router = APIRouter(route_class=HtmlRoute, include_in_schema=False)
for page in (auth, account, projects, datasets, jobs, review, snapshots, training, evaluations, audit):
    router.include_router(page.router)
