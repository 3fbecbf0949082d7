"""Job-start forms (generated from each kind's parameter schema) and the jobs list."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from app.auth.models import Role, User
from app.base import utcnow
from app.datasets import service as datasets
from app.datasets.models import Dataset
from app.deps import SessionDep
from app.errors import DomainError, Invalid, NotFound
from app.generation import service as generation
from app.generation.schemas import EstimateRequest
from app.jobs import service as jobs
from app.jobs.models import ACTIVE_STATUSES, Job
from app.jobs.registry import KINDS, JobKind
from app.pipeline.rules import RULES
from app.ui import jobview
from app.ui.forms import Choice, FormField, form_fields, parse_form
from app.ui.web import CheckedForm, HtmlRoute, PageUser, redirect, render

router = APIRouter(route_class=HtmlRoute, include_in_schema=False)

OVERRIDE_WARNING = (
    "With “override human decisions” on, this job may change the status of {human} records that "
    "a person accepted, rejected, edited or rated. Start it again to confirm, or untick the box."
)


def startable_kinds() -> list[JobKind]:
    """The kinds a curator starts from a form (not internal ones, nor imports: those are uploads)."""
    return [k for k in KINDS.values() if not k.internal and k.name != "import"]


def _kind_form(kind: str) -> tuple[JobKind, list[FormField]]:
    spec = KINDS.get(kind)
    if spec is None or spec not in startable_kinds():
        raise NotFound(f"no job kind {kind!r} to start from a form")
    model = spec.params_cls()
    defaults = {
        name: f.get_default(call_default_factory=True)
        for name, f in model.model_fields.items()
        if not f.is_required()
    }
    plain = {
        k: (v.model_dump(mode="json", exclude_none=True) if hasattr(v, "model_dump") else v)
        for k, v in defaults.items()
    }
    return spec, form_fields(model.model_json_schema(), plain)


def _defaults_of(fields: list[FormField]) -> dict[str, Any]:
    shown = {f.name: f.selected if f.kind == "multi" else ("on" if f.checked else f.value) for f in fields}
    return parse_form(fields, shown)


def _price(per_1k: float) -> str:
    return f"${per_1k:g}" if per_1k else "free"


def _teacher_choices(user: User) -> tuple[list[Choice], str]:
    """The configured teachers with model and price, or none and why (the form then takes a name)."""
    try:
        known = generation.list_teachers(user=user)
    except Invalid as exc:
        return [], exc.message
    if not known:
        return [], "No teacher is configured: set IF_TEACHERS (see docs/teachers.md)."
    return [
        Choice(
            t.name,
            f"{t.name} — {t.model} · {_price(t.price_in_per_1k)} in / {_price(t.price_out_per_1k)} out per 1k tokens"
            + (
                f" · batch API {_price(t.batch_price_in_per_1k or 0)} in / "
                f"{_price(t.batch_price_out_per_1k or 0)} out"
                if t.batch
                else ""
            ),
            "batch" if t.batch else "",
        )
        for t in known
    ], ""


def _offer_choices(fields: list[FormField], user: User, dataset: Dataset) -> None:
    """Known values as choices: the teacher among the configured ones, rules ticked from the registry with
    their descriptions (the dataset's saved selection, or every rule, ticked to start with)."""
    for f in fields:
        if f.name == "teacher":
            choices, why = _teacher_choices(user)
            if choices:
                f.as_select(choices)
            else:
                f.help = why
            for b in [x for x in fields if x.name == "batch"]:
                # Offered with the teachers that have a batch API; the page shows it only while one of them
                # is chosen (batch.js), and job creation refuses it with any other.
                b.options = [c for c in choices if c.help == "batch"]
                names = ", ".join(c.value for c in b.options) or "none of the configured teachers"
                b.help = f"{b.help} Teachers with a batch API: {names}."
        elif f.name == "rules" and f.kind == "json":
            saved = ((dataset.settings or {}).get("rules") or {}).get("enabled") or list(RULES)
            f.as_multi([Choice(code, code, rule.description) for code, rule in RULES.items()], list(saved))
            f.help = "The rules to run; with none ticked, the dataset's saved selection (or every rule) runs."


@dataclass
class JobForm:
    """The job form page: the fields, how many records of the scope a person decided, and any error."""

    dataset: Dataset
    spec: JobKind
    fields: list[FormField]
    human: int = 0
    error: str | None = None
    confirm: int | None = None
    status_code: int = 200
    estimable: bool = False

    def render(self, request: Request, user: User) -> Response:
        return render(request, "job_form.html", user, **vars(self))


def _job_form(db: Session, user: User, dataset_id: int, kind: str) -> JobForm:
    dataset = datasets.require_dataset(db=db, user=user, dataset_id=dataset_id, min_role=Role.curator.value)
    spec, fields = _kind_form(kind)
    _offer_choices(fields, user, dataset)
    # No configured teacher has a batch API: the form does not offer batch mode at all.
    fields = [f for f in fields if not (f.name == "batch" and f.kind == "checkbox" and not f.options)]
    return JobForm(dataset=dataset, spec=spec, fields=fields, estimable=kind in generation.ESTIMATED_KINDS)


def _show_posted(fields: list[FormField], form: FormData) -> None:
    """A form shown again shows what was posted."""
    for f in fields:
        if f.kind == "checkbox":
            f.checked = form.get(f.name) == "on"
        elif f.kind == "multi":
            f.selected = [str(v) for v in form.getlist(f.name)]
        else:
            f.value = str(form.get(f.name, f.value))


def _start(db: Session, user: User, page: JobForm, form: FormData) -> Job | None:
    """The job the posted form describes, queued; None, with the page's error set, if it was not started."""
    page.status_code = 422
    try:
        params = parse_form(page.fields, form)
        page.human = jobs.human_decided_in_scope(
            db=db, user=user, dataset_id=page.dataset.id, kind=page.spec.name, params=params
        )
        if params.get("override_human") and page.human and form.get("confirm_override") != str(page.human):
            # A curator overturning people's decisions says so twice, knowing how many.
            page.confirm, page.status_code = page.human, 409
            page.error = OVERRIDE_WARNING.format(human=page.human)
            return None
        return jobs.create_job(
            db=db, user=user, kind=page.spec.name, project_id=None, dataset_id=page.dataset.id, params=params
        )
    except Invalid as exc:
        page.error = exc.message
        return None


@router.get("/ui/datasets/{dataset_id}/jobs/new/{kind}")
def job_form(request: Request, dataset_id: int, kind: str, user: PageUser, db: SessionDep) -> Response:
    page = _job_form(db, user, dataset_id, kind)
    params = _defaults_of(page.fields)
    page.human = jobs.human_decided_in_scope(
        db=db, user=user, dataset_id=dataset_id, kind=kind, params=params
    )
    return page.render(request, user)


@router.post("/ui/datasets/{dataset_id}/jobs/new/{kind}")
def job_start(
    request: Request, dataset_id: int, kind: str, form: CheckedForm, user: PageUser, db: SessionDep
) -> Response:
    page = _job_form(db, user, dataset_id, kind)
    _show_posted(page.fields, form)
    job = _start(db, user, page, form)
    if job is None:
        return page.render(request, user)
    return redirect(f"/ui/jobs/{job.id}", f"{kind} job {job.id} queued")


def _estimate(db: Session, user: User, page: JobForm, form: FormData) -> JSONResponse:
    """The cost of the job the form describes, as JSON for the form's Estimate button; nothing is started.
    A refusal (a bad value, an unknown teacher: a 422 naming the field; a teacher that does not answer) is
    JSON too, read out beside the button."""
    try:
        params = parse_form(page.fields, form)
        request = EstimateRequest(dataset_id=page.dataset.id, kind=page.spec.name, params=params)
        estimate = generation.estimate(db=db, user=user, request=request)
    except DomainError as exc:
        body = {"detail": exc.message, "field": exc.detail.get("field")}
        return JSONResponse(body, status_code=exc.status_code)
    return JSONResponse(estimate.model_dump())


@router.post("/ui/datasets/{dataset_id}/jobs/new/{kind}/estimate")
def job_estimate(dataset_id: int, kind: str, form: CheckedForm, user: PageUser, db: SessionDep) -> Response:
    return _estimate(db, user, _job_form(db, user, dataset_id, kind), form)


def _words(job: Job) -> dict[str, Any]:
    """What the job page and the jobs list show of a job beyond its columns."""
    seconds = jobview.run_time(job.started_at, job.finished_at, utcnow())
    return {
        "started": jobview.when(job.started_at),
        "finished": jobview.when(job.finished_at),
        "duration": jobview.duration(seconds),
        "counters": jobview.rows(job.counters),
        "counters_line": jobview.line(jobview.rows(job.counters)),
        "params": jobview.rows(job.params),
        "result": jobview.rows(job.result),
    }


@router.get("/ui/jobs")
def jobs_page(request: Request, user: PageUser, db: SessionDep, dataset_id: int | None = None) -> Response:
    rows = jobs.list_jobs(
        db=db, user=user, project_id=None, dataset_id=dataset_id, status=None, kind=None, limit=100
    )
    names = datasets.dataset_names(db=db, dataset_ids={j.dataset_id for j in rows if j.dataset_id})
    words = {j.id: _words(j) for j in rows}
    return render(request, "jobs.html", user, jobs=rows, names=names, words=words, active=ACTIVE_STATUSES)


@router.get("/ui/jobs/{job_id}")
def job_page(request: Request, job_id: int, user: PageUser, db: SessionDep) -> Response:
    job: Job = jobs.get_job(db=db, user=user, job_id=job_id)
    names = datasets.dataset_names(db=db, dataset_ids={job.dataset_id} if job.dataset_id else set())
    return render(
        request,
        "job.html",
        user,
        job=job,
        dataset_name=names.get(job.dataset_id or 0),
        words=_words(job),
        active=ACTIVE_STATUSES,
    )
