"""The web UI: server-rendered pages for annotators and curators. Every page is authorised with the same
service calls as the API; every form carries the session's CSRF token; writes made by page scripts go to the
JSON API with the X-CSRF-Token header."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, RedirectResponse
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth import service as auth_service
from app.auth.models import Role, User
from app.auth.router import set_session_cookie
from app.datasets import service as datasets
from app.datasets.models import Dataset
from app.deps import SESSION_COOKIE, SessionDep, SettingsDep, user_from_cookie
from app.errors import DomainError, Forbidden, Invalid, NotFound
from app.jobs import service as jobs
from app.jobs.models import ACTIVE_STATUSES, Job
from app.jobs.registry import KINDS
from app.projects import service as projects
from app.projects.models import Project, ProjectMember
from app.records import service as records
from app.records.models import Record, RecordAssignment
from app.records.schemas import RecordFilter
from app.review import insights
from app.review import service as review
from app.snapshots import service as snapshots
from app.ui.charts import bar_chart
from app.ui.forms import form_fields, parse_form
from app.ui.web import (
    HERE,
    LOGIN_COOKIE,
    CheckedForm,
    HtmlRoute,
    PageUser,
    check_login_csrf,
    login_csrf,
    redirect,
    render,
    safe_next,
    set_login_cookie,
)

router = APIRouter(route_class=HtmlRoute, include_in_schema=False)
STATIC = (HERE / "static").resolve()

PREFETCH = 5
EXPORT_FORMATS = ("alpaca", "alpaca_jsonl", "sharegpt", "openai")
FILTER_FIELDS = (
    "source",
    "tag",
    "q",
    "reason",
    "label",
    "min_nn_score",
    "max_nn_score",
    "min_judge_score",
    "max_judge_score",
)


# ---------------------------------------------------------------- login


@router.get("/")
def home(request: Request, db: SessionDep, settings: SettingsDep) -> RedirectResponse:
    user = user_from_cookie(db, settings, request.cookies.get(SESSION_COOKIE))
    return RedirectResponse("/ui" if user else "/login", status_code=303)


@router.get("/ui/static/{path:path}")
def static(path: str) -> FileResponse:
    """The UI's own CSS and JS (no third-party assets, no build step)."""
    target = (STATIC / path).resolve()
    if not target.is_relative_to(STATIC) or not target.is_file():
        raise NotFound("no such file")
    return FileResponse(target, headers={"Cache-Control": "no-cache"})


@router.get("/login")
def login_page(request: Request, settings: SettingsDep, next: str | None = None) -> Response:
    value, token = login_csrf(request)
    response = render(request, "login.html", None, next=safe_next(next), error=None, login_token=token)
    set_login_cookie(response, value, settings)
    return response


@router.post("/login")
async def login_submit(request: Request, db: SessionDep, settings: SettingsDep) -> Response:
    form = await request.form()
    next_url = safe_next(str(form.get("next") or ""))
    token = form.get("csrf_token")
    if not check_login_csrf(request, token if isinstance(token, str) else None, settings):
        raise Forbidden("the login form expired: reload the page and log in again")
    try:
        user = auth_service.authenticate(
            db=db, username=str(form.get("username", "")), password=str(form.get("password", ""))
        )
    except DomainError as exc:
        return render(
            request,
            "login.html",
            None,
            status_code=exc.status_code,
            next=next_url,
            error=exc.message,
            login_token=login_csrf(request)[1],
        )
    response = RedirectResponse(next_url, status_code=303)
    set_session_cookie(response, settings, user)
    response.delete_cookie(LOGIN_COOKIE)
    return response


@router.post("/logout")
def logout(form: CheckedForm) -> RedirectResponse:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# ---------------------------------------------------------------- dashboard, users, projects


@router.get("/ui")
def dashboard(request: Request, user: PageUser, db: SessionDep) -> Response:
    """Your projects and their datasets; annotators see their review queues."""
    mine = projects.list_projects(db=db, user=user)
    ids = [p.id for p in mine]
    by_project: dict[int, list[Dataset]] = {pid: [] for pid in ids}
    for d in db.scalars(select(Dataset).where(Dataset.project_id.in_(ids)).order_by(Dataset.id)):
        by_project[d.project_id].append(d)
    roles = (
        {pid: Role.admin.value for pid in ids}
        if user.role == Role.admin.value
        else dict(
            db.execute(
                select(ProjectMember.project_id, ProjectMember.role).where(ProjectMember.user_id == user.id)
            )
            .tuples()
            .all()
        )
    )
    open_assignments = dict(
        db.execute(
            select(RecordAssignment.dataset_id, func.count())
            .where(RecordAssignment.user_id == user.id, RecordAssignment.done.is_(False))
            .group_by(RecordAssignment.dataset_id)
        )
        .tuples()
        .all()
    )
    return render(
        request,
        "dashboard.html",
        user,
        projects=mine,
        datasets=by_project,
        roles=roles,
        open_assignments=open_assignments,
    )


@router.get("/ui/users")
def users_page(request: Request, user: PageUser, db: SessionDep) -> Response:
    if user.role != Role.admin.value:
        raise Forbidden("only admins manage users")
    return render(request, "users.html", user, users=db.scalars(select(User).order_by(User.username)).all())


@router.post("/ui/users")
def create_user(form: CheckedForm, user: PageUser, db: SessionDep) -> Response:
    if user.role != Role.admin.value:
        raise Forbidden("only admins manage users")
    created = auth_service.create_user(
        db=db,
        username=str(form.get("username", "")).strip(),
        password=str(form.get("password", "")),
        role=str(form.get("role", Role.annotator.value)),
        actor_id=user.id,
    )
    return redirect("/ui/users", f"created user {created.username}")


@router.post("/ui/projects")
def create_project(form: CheckedForm, user: PageUser, db: SessionDep) -> Response:
    project = projects.create_project(
        db=db, user=user, name=str(form.get("name", "")).strip(), description=str(form.get("description", ""))
    )
    return redirect(f"/ui/projects/{project.id}", "project created")


@router.get("/ui/projects/{project_id}")
def project_page(request: Request, project_id: int, user: PageUser, db: SessionDep) -> Response:
    """Members with their roles and the project's datasets (curators and admins)."""
    project = projects.require_project(db=db, user=user, project_id=project_id, min_role=Role.curator.value)
    members = projects.list_members(db=db, user=user, project_id=project_id)
    member_ids = {u.id for _, u in members}
    candidates = [
        u
        for u in db.scalars(select(User).where(User.is_active.is_(True)).order_by(User.username))
        if u.id not in member_ids
    ]
    return render(
        request,
        "project.html",
        user,
        project=project,
        members=members,
        candidates=candidates,
        datasets=datasets.list_datasets(db=db, user=user, project_id=project_id),
    )


@router.post("/ui/projects/{project_id}/members")
def set_member(project_id: int, form: CheckedForm, user: PageUser, db: SessionDep) -> Response:
    try:
        target = int(str(form.get("user_id", "")))
    except ValueError:
        raise Invalid("choose a user", field="user_id") from None
    projects.add_member(
        db=db, user=user, project_id=project_id, user_id=target, role=str(form.get("role", "annotator"))
    )
    return redirect(f"/ui/projects/{project_id}", "member saved")


@router.post("/ui/projects/{project_id}/members/{member_id}/remove")
def remove_member(
    project_id: int, member_id: int, form: CheckedForm, user: PageUser, db: SessionDep
) -> Response:
    projects.remove_member(db=db, user=user, project_id=project_id, user_id=member_id)
    return redirect(f"/ui/projects/{project_id}", "member removed")


@router.post("/ui/projects/{project_id}/datasets")
def create_dataset(project_id: int, form: CheckedForm, user: PageUser, db: SessionDep) -> Response:
    dataset = datasets.create_dataset(
        db=db,
        user=user,
        project_id=project_id,
        name=str(form.get("name", "")).strip(),
        language=str(form.get("language", "en")).strip() or "en",
        description=str(form.get("description", "")),
        guidelines=str(form.get("guidelines", "")),
    )
    return redirect(f"/ui/datasets/{dataset.id}", "dataset created")


# ---------------------------------------------------------------- dataset (curators)


def _charts(stats: dict[str, Any]) -> list[Any]:
    return [
        bar_chart("Records by status", stats["by_status"]),
        bar_chart("By source", stats["by_source"]),
        bar_chart("By label (top 20)", stats["by_label"]),
        bar_chart("Most common leading words", stats["leading_words"]),
        bar_chart("Prompt length (chars, from)", stats["prompt_chars"], horizontal=False),
        bar_chart("Response length (chars, from)", stats["output_chars"], horizontal=False),
        bar_chart("Nearest-neighbour ROUGE-L", stats["nn_rouge"], horizontal=False),
    ]


@router.get("/ui/datasets/{dataset_id}")
def dataset_page(request: Request, dataset_id: int, user: PageUser, db: SessionDep) -> Response:
    """Stats as pictures, annotators, agreement, bulk actions, duplicate groups, jobs and snapshots."""
    dataset = datasets.require_dataset(db=db, user=user, dataset_id=dataset_id, min_role=Role.curator.value)
    stats = insights.dataset_stats(db=db, user=user, dataset_id=dataset_id)
    members = projects.list_members(db=db, user=user, project_id=dataset.project_id)
    return render(
        request,
        "dataset.html",
        user,
        dataset=dataset,
        project=db.get(Project, dataset.project_id),
        stats=stats,
        charts=_charts(stats),
        annotators=insights.annotator_progress(db=db, user=user, dataset_id=dataset_id),
        agreement=insights.agreement(db=db, user=user, dataset_id=dataset_id),
        groups=insights.duplicate_groups(db=db, user=user, dataset_id=dataset_id, limit=20),
        members=members,
        kinds=[k for k in KINDS.values() if not k.internal and k.name != "import"],
        jobs=jobs.list_jobs(
            db=db, user=user, project_id=None, dataset_id=dataset_id, status=None, kind=None, limit=10
        ),
        snapshots=snapshots.list_snapshots(db=db, user=user, dataset_id=dataset_id),
        export_formats=EXPORT_FORMATS,
        flagged=db.scalar(
            select(func.count()).select_from(
                select(Record.id)
                .where(Record.dataset_id == dataset_id, Record.flagged.is_(True))
                .limit(1000)
                .subquery()
            )
        ),
    )


def _filter_from(values: Any) -> RecordFilter:
    """A RecordFilter from query or form fields; blank fields mean 'any'."""
    raw: dict[str, Any] = {}
    statuses = [s for s in values.getlist("status") if s]
    if statuses:
        raw["status"] = statuses
    for name in FILTER_FIELDS:
        value = str(values.get(name) or "").strip()
        if value:
            raw[name] = value
    flagged = str(values.get("flagged") or "")
    if flagged in ("true", "false"):
        raw["flagged"] = flagged == "true"
    decided = str(values.get("decided") or "")
    if decided in ("human", "machine"):
        raw["human_decided"] = decided == "human"
    elif decided == "disagreement":
        raw["disagreement"] = True
    try:
        return RecordFilter.model_validate(raw)
    except ValidationError as exc:
        raise Invalid(jobs.validation_message(exc, prefix="filter")) from exc


@router.get("/ui/datasets/{dataset_id}/records")
def records_page(
    request: Request, dataset_id: int, user: PageUser, db: SessionDep, cursor: str | None = None
) -> Response:
    """Browse a filter of the records, 50 at a time (keyset pages: fast at any depth)."""
    dataset = datasets.require_dataset(db=db, user=user, dataset_id=dataset_id, min_role=Role.curator.value)
    flt = _filter_from(request.query_params)
    rows, next_cursor = records.list_records(
        db=db, user=user, dataset_id=dataset_id, flt=flt, limit=50, cursor=cursor
    )
    query = [(k, v) for k, v in request.query_params.multi_items() if k != "cursor"]
    return render(
        request,
        "records.html",
        user,
        dataset=dataset,
        rows=rows,
        flt=flt,
        next_cursor=next_cursor,
        query=query,
    )


@router.post("/ui/datasets/{dataset_id}/bulk")
def bulk(dataset_id: int, form: CheckedForm, user: PageUser, db: SessionDep) -> Response:
    """Set the status of every record of a filter (the whole filter, not a page)."""
    status = str(form.get("target_status", ""))
    if status not in ("pending", "accepted", "rejected", "filtered"):
        raise Invalid("choose the status to set", field="target_status")
    flt = _filter_from(form)
    n = records.bulk_set_status(
        db=db,
        user=user,
        dataset_id=dataset_id,
        flt=flt,
        status=status,
        reason=str(form.get("set_reason") or "").strip()[:64] or None,
    )
    return redirect(f"/ui/datasets/{dataset_id}", f"{n} records set to {status}")


@router.post("/ui/datasets/{dataset_id}/groups/{anchor_id}")
def decide_group(
    dataset_id: int, anchor_id: int, form: CheckedForm, user: PageUser, db: SessionDep
) -> Response:
    status = str(form.get("status", ""))
    if status not in ("accepted", "rejected"):
        raise Invalid("status must be accepted or rejected", field="status")
    n = insights.decide_group(
        db=db,
        user=user,
        dataset_id=dataset_id,
        anchor_id=anchor_id,
        status=status,
        include_anchor=form.get("include_anchor") == "on",
    )
    return redirect(f"/ui/datasets/{dataset_id}", f"group of record {anchor_id}: {n} records set to {status}")


@router.post("/ui/datasets/{dataset_id}/guidelines")
def save_guidelines(dataset_id: int, form: CheckedForm, user: PageUser, db: SessionDep) -> Response:
    datasets.update_dataset(
        db=db,
        user=user,
        dataset_id=dataset_id,
        changes={"guidelines": str(form.get("guidelines", ""))[:50_000]},
    )
    return redirect(f"/ui/datasets/{dataset_id}", "guidelines saved")


@router.post("/ui/datasets/{dataset_id}/assign")
def assign(dataset_id: int, form: CheckedForm, user: PageUser, db: SessionDep) -> Response:
    try:
        user_ids = [int(str(v)) for v in form.getlist("user_ids")]
        k = int(str(form.get("k") or "1"))
    except ValueError:
        raise Invalid("choose annotators and k") from None
    if not user_ids:
        raise Invalid("choose at least one annotator", field="user_ids")
    n, created = review.assign(
        db=db,
        user=user,
        dataset_id=dataset_id,
        user_ids=user_ids,
        k=k,
        flt=_filter_from(form) if form.getlist("status") else RecordFilter(status=["pending"]),
        limit=100_000,
    )
    return redirect(f"/ui/datasets/{dataset_id}", f"{created} assignments over {n} records")


# ---------------------------------------------------------------- jobs


def _kind_form(kind: str) -> tuple[Any, list[Any]]:
    spec = KINDS.get(kind)
    if spec is None or spec.internal or kind == "import":
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


def _human_decided_in_scope(
    db: Session, user: User, dataset_id: int, kind: str, params: dict[str, Any]
) -> int:
    """How many records a person decided in the job's scope: what `override_human` lets the job change."""
    fields = KINDS[kind].params_cls().model_fields
    if "override_human" not in fields:
        return 0
    try:
        raw = params.get("scope")
        scope = (
            RecordFilter.model_validate(raw)
            if raw
            else fields["scope"].get_default(call_default_factory=True)
        )
    except ValidationError as exc:
        raise Invalid(jobs.validation_message(exc, prefix="params.scope")) from exc
    flt = scope.model_copy(update={"human_decided": True})
    return records.count_records(db=db, user=user, dataset_id=dataset_id, flt=flt)


@router.get("/ui/datasets/{dataset_id}/jobs/new/{kind}")
def job_form(request: Request, dataset_id: int, kind: str, user: PageUser, db: SessionDep) -> Response:
    dataset = datasets.require_dataset(db=db, user=user, dataset_id=dataset_id, min_role=Role.curator.value)
    spec, fields = _kind_form(kind)
    human = _human_decided_in_scope(db, user, dataset_id, kind, _defaults_of(fields))
    return render(
        request,
        "job_form.html",
        user,
        dataset=dataset,
        spec=spec,
        fields=fields,
        error=None,
        human=human,
        confirm=None,
    )


def _defaults_of(fields: list[Any]) -> dict[str, Any]:
    return parse_form(fields, {f.name: ("on" if f.checked else f.value) for f in fields})


@router.post("/ui/datasets/{dataset_id}/jobs/new/{kind}")
def job_start(
    request: Request, dataset_id: int, kind: str, form: CheckedForm, user: PageUser, db: SessionDep
) -> Response:
    dataset = datasets.require_dataset(db=db, user=user, dataset_id=dataset_id, min_role=Role.curator.value)
    spec, fields = _kind_form(kind)
    for f in fields:  # a form shown again shows what was posted
        if f.kind == "checkbox":
            f.checked = form.get(f.name) == "on"
        else:
            f.value = str(form.get(f.name, f.value))
    human, confirm, error, status = 0, None, None, 422
    try:
        params = parse_form(fields, form)
        human = _human_decided_in_scope(db, user, dataset_id, kind, params)
        if params.get("override_human") and human and form.get("confirm_override") != str(human):
            # A curator overturning people's decisions says so twice, knowing how many.
            confirm, status = human, 409
            error = (
                f"With “override human decisions” on, this job may change the status of {human} records that "
                "a person accepted, rejected, edited or rated. Start it again to confirm, or untick the box."
            )
        else:
            job = jobs.create_job(
                db=db, user=user, kind=kind, project_id=None, dataset_id=dataset_id, params=params
            )
            return redirect(f"/ui/jobs/{job.id}", f"{kind} job {job.id} queued")
    except Invalid as exc:
        error = exc.message
    return render(
        request,
        "job_form.html",
        user,
        status_code=status,
        dataset=dataset,
        spec=spec,
        fields=fields,
        error=error,
        human=human,
        confirm=confirm,
    )


@router.get("/ui/jobs")
def jobs_page(request: Request, user: PageUser, db: SessionDep, dataset_id: int | None = None) -> Response:
    rows = jobs.list_jobs(
        db=db, user=user, project_id=None, dataset_id=dataset_id, status=None, kind=None, limit=100
    )
    names = dict(
        db.execute(
            select(Dataset.id, Dataset.name).where(
                Dataset.id.in_({j.dataset_id for j in rows if j.dataset_id})
            )
        )
        .tuples()
        .all()
    )
    return render(request, "jobs.html", user, jobs=rows, names=names, active=ACTIVE_STATUSES)


@router.get("/ui/jobs/{job_id}")
def job_page(request: Request, job_id: int, user: PageUser, db: SessionDep) -> Response:
    job: Job = jobs.get_job(db=db, user=user, job_id=job_id)
    return render(request, "job.html", user, job=job, active=ACTIVE_STATUSES)


# ---------------------------------------------------------------- review (annotators)


@router.get("/ui/datasets/{dataset_id}/review")
def review_page(
    request: Request, dataset_id: int, user: PageUser, db: SessionDep, record: int | None = None
) -> Response:
    """The keyboard review page; the first records (and the ones after) ride along in the page."""
    dataset = datasets.require_dataset(db=db, user=user, dataset_id=dataset_id)
    if record is not None:
        one = records.get_record(db=db, user=user, record_id=record)
        if one.dataset_id != dataset_id:
            raise NotFound(f"record {record} not found")
        items = review.review_items(db=db, rows=[one])
        items += review.queue(db=db, user=user, dataset_id=dataset_id, after_id=one.id, limit=PREFETCH)
    else:
        items = review.queue(db=db, user=user, dataset_id=dataset_id, limit=PREFETCH)
    data = {
        "dataset_id": dataset.id,
        "prefetch": PREFETCH,
        "items": [i.model_dump(mode="json") for i in items],
        "open_assignments": review.open_assignments(db=db, user=user, dataset_id=dataset_id),
    }
    return render(request, "review.html", user, dataset=dataset, data=data)


@router.get("/ui/records/{record_id}/history")
def history_page(request: Request, record_id: int, user: PageUser, db: SessionDep) -> Response:
    record = records.get_record(db=db, user=user, record_id=record_id)
    return render(
        request,
        "history.html",
        user,
        record=record,
        history=review.history(db=db, user=user, record_id=record_id),
    )


# ---------------------------------------------------------------- snapshots


@router.post("/ui/datasets/{dataset_id}/snapshots")
def create_snapshot(dataset_id: int, form: CheckedForm, user: PageUser, db: SessionDep) -> Response:
    statuses = [s for s in form.getlist("status") if s] or ["accepted"]
    snap = snapshots.create_snapshot(
        db=db,
        user=user,
        dataset_id=dataset_id,
        name=str(form.get("name", "")).strip(),
        description=str(form.get("description", "")),
        flt=RecordFilter.model_validate({"status": statuses}),
    )
    return redirect(
        f"/ui/datasets/{dataset_id}", f"snapshot {snap.name} created: {snap.record_count} records"
    )


@router.get("/ui/snapshots/compare")
def compare_snapshots(
    request: Request, user: PageUser, db: SessionDep, a: Annotated[int, Query()], b: Annotated[int, Query()]
) -> Response:
    diff = snapshots.diff(db=db, user=user, a_id=a, b_id=b)
    return render(
        request,
        "compare.html",
        user,
        a=snapshots.require_snapshot(db=db, user=user, snapshot_id=a),
        b=snapshots.require_snapshot(db=db, user=user, snapshot_id=b),
        diff=diff,
        shown=200,
    )


# ---------------------------------------------------------------- training runs


@router.get("/ui/training")
def training_page(request: Request, user: PageUser, db: SessionDep) -> Response:
    """Training runs; the page renders (saying so) when this install has no training API."""
    try:
        from app.training import service as training
    except ImportError:
        return render(request, "training.html", user, available=False, runs=[], snaps=[])
    runs = training.list_runs(db=db, user=user, project_id=None)
    snaps: list[tuple[Any, str]] = []
    for project in projects.list_projects(db=db, user=user):
        for d in datasets.list_datasets(db=db, user=user, project_id=project.id):
            snaps += [(s, d.name) for s in snapshots.list_snapshots(db=db, user=user, dataset_id=d.id)]
    return render(request, "training.html", user, available=True, runs=runs, snaps=snaps)


@router.get("/ui/training/{run_id}")
def training_run_page(request: Request, run_id: int, user: PageUser, db: SessionDep) -> Response:
    from app.training import service as training

    training.require_run(db=db, user=user, run_id=run_id)  # 404 as the API, unless a member of its project
    return render(request, "training_run.html", user, run_id=run_id)
