"""Training runs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy.orm import Session

from app.auth.models import User
from app.config import get_settings
from app.datasets import service as datasets
from app.deps import SessionDep
from app.errors import Invalid
from app.projects import service as projects
from app.snapshots import service as snapshots
from app.ui.web import CheckedForm, HtmlRoute, PageUser, redirect, render

router = APIRouter(route_class=HtmlRoute, include_in_schema=False)


@router.get("/ui/training")
def training_page(request: Request, user: PageUser, db: SessionDep) -> Response:
    """Training runs; the page renders (saying so) when this install has no training API."""
    try:
        from app.training import service as training
    except ImportError:
        return render(request, "training.html", user, available=False, runs=[], snaps=[], models=[])
    runs = training.list_runs(db=db, user=user, project_id=None)
    return render(request, "training.html", user, available=True, runs=runs, **_form_context(db, user))


def _form_context(db: Session, user: User) -> dict[str, Any]:
    """What the "start a run" form offers: the same checks as `instructforge models` and POST /training-runs."""
    from app.training import service as training

    return {
        "snaps": _snapshots(db, user),
        "models": training.base_models(),
        "worker_gpus": get_settings().worker_gpus,  # what POST /training-runs checks gpus against
    }


def _snapshots(db: Session, user: User) -> list[tuple[Any, str]]:
    """Every snapshot the user can see, with its dataset's name."""
    snaps: list[tuple[Any, str]] = []
    for project in projects.list_projects(db=db, user=user):
        for d in datasets.list_datasets(db=db, user=user, project_id=project.id):
            snaps += [(s, d.name) for s in snapshots.list_snapshots(db=db, user=user, dataset_id=d.id)]
    return snaps


def _run_context(db: Session, user: User, run_id: int, error: Invalid | None = None) -> dict[str, Any]:
    """The run page's server-drawn part: its evaluations and the "evaluate against base" form (404 as the API,
    unless a member of the run's project)."""
    from app.evaluation import service as evaluations
    from app.generation import service as generation
    from app.training import service as training

    run = training.require_run(db=db, user=user, run_id=run_id)
    try:
        judges = [t.name for t in generation.list_teachers(user=user)]
    except Invalid:
        judges = []
    mine = [
        (e, job)
        for e, job in evaluations.list_evaluations(db=db, user=user, project_id=run.project_id)
        if any(s.training_run_id == run_id for s in evaluations.systems_of(db=db, evaluation_id=e.id))
    ]
    return {
        "run_id": run_id,
        "evaluations": mine,
        "judges": judges,
        "eval_error": error.message if error else None,
    }


def _evaluate_against_base(db: Session, user: User, run_id: int, form: Any) -> Any:
    from pydantic import ValidationError

    from app.errors import validation_message
    from app.evaluation import service as evaluations
    from app.evaluation.schemas import EvaluateAgainstBase

    fields = {k: str(form.get(k, "")).strip() for k in ("judge_teacher", "split", "max_prompts")}
    body = {k: v for k, v in fields.items() if v} | {"scores": form.get("scores") == "on"}
    try:
        request = EvaluateAgainstBase.model_validate(body)
    except ValidationError as exc:
        raise Invalid(validation_message(exc.errors()), field=str(exc.errors()[0]["loc"][0])) from None
    return evaluations.evaluate_against_base(db=db, user=user, run_id=run_id, body=request)


@router.get("/ui/training/{run_id}")
def training_run_page(request: Request, run_id: int, user: PageUser, db: SessionDep) -> Response:
    return render(request, "training_run.html", user, **_run_context(db, user, run_id))


@router.post("/ui/training/{run_id}/evaluate-against-base")
def evaluate_against_base(
    request: Request, run_id: int, form: CheckedForm, user: PageUser, db: SessionDep
) -> Response:
    """Queue the run against its own base model; the form again, naming the field, if refused."""
    try:
        evaluation = _evaluate_against_base(db, user, run_id, form)
    except Invalid as exc:
        context = _run_context(db, user, run_id, exc)
        return render(request, "training_run.html", user, status_code=exc.status_code, **context)
    return redirect(f"/ui/evaluations/{evaluation.id}", f"evaluation {evaluation.id} queued")
