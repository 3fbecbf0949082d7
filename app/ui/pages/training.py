"""Training runs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy.orm import Session

from app.auth.models import User
from app.datasets import service as datasets
from app.deps import SessionDep
from app.projects import service as projects
from app.snapshots import service as snapshots
from app.ui.web import HtmlRoute, PageUser, render

router = APIRouter(route_class=HtmlRoute, include_in_schema=False)


@router.get("/ui/training")
def training_page(request: Request, user: PageUser, db: SessionDep) -> Response:
    """Training runs; the page renders (saying so) when this install has no training API."""
    try:
        from app.training import service as training
    except ImportError:
        return render(request, "training.html", user, available=False, runs=[], snaps=[], models=[])
    runs = training.list_runs(db=db, user=user, project_id=None)
    # the same check as `instructforge models` and POST /training-runs: the form offers what a run accepts
    models = training.base_models()
    return render(
        request, "training.html", user, available=True, runs=runs, snaps=_snapshots(db, user), models=models
    )


def _snapshots(db: Session, user: User) -> list[tuple[Any, str]]:
    """Every snapshot the user can see, with its dataset's name."""
    snaps: list[tuple[Any, str]] = []
    for project in projects.list_projects(db=db, user=user):
        for d in datasets.list_datasets(db=db, user=user, project_id=project.id):
            snaps += [(s, d.name) for s in snapshots.list_snapshots(db=db, user=user, dataset_id=d.id)]
    return snaps


@router.get("/ui/training/{run_id}")
def training_run_page(request: Request, run_id: int, user: PageUser, db: SessionDep) -> Response:
    from app.training import service as training

    training.require_run(db=db, user=user, run_id=run_id)  # 404 as the API, unless a member of its project
    return render(request, "training_run.html", user, run_id=run_id)
