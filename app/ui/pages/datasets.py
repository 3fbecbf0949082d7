"""A dataset for its curators: the overview, the records browser, bulk actions, duplicate groups,
guidelines and assignments."""

from __future__ import annotations

from typing import Any, get_args

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from app.auth.models import Role, User
from app.datasets import service as datasets
from app.datasets.models import Dataset
from app.deps import SessionDep
from app.errors import Invalid, invalid
from app.jobs import service as jobs
from app.pipeline.formats import EXPORTERS, FORMATS
from app.projects import service as projects
from app.records import service as records
from app.records.schemas import RecordFilter, StatusLiteral
from app.review import insights
from app.review import service as review
from app.snapshots import service as snapshots
from app.ui.charts import bar_chart
from app.ui.pages.jobs import startable_kinds
from app.ui.web import CheckedForm, HtmlRoute, PageUser, redirect, render

router = APIRouter(route_class=HtmlRoute, include_in_schema=False)

EXPORT_FORMATS = tuple(EXPORTERS)  # one row per record; DPO pairs are on the snapshot page
IMPORT_FORMATS = ("auto", *FORMATS)
STATUSES: tuple[str, ...] = get_args(StatusLiteral)
# The dataset page counts flagged records up to this many ("1000+"): a count that stays cheap.
FLAGGED_CAP = 1000
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


def _stats(db: Session, user: User, dataset: Dataset, include_filtered: bool) -> dict[str, Any]:
    """The stats section's context (dataset_stats.html), with the page's other figures that scan the records
    (duplicate groups, flagged count): all from the cache while they are current."""
    figures = insights.dataset_page_figures(
        db=db, user=user, dataset_id=dataset.id, include_filtered=include_filtered, flagged_cap=FLAGGED_CAP
    )
    stats = figures["stats"]
    return {
        "dataset": dataset,
        "stats": stats,
        "charts": _charts(stats),
        "include_filtered": include_filtered,
        "groups": figures["groups"],
        "flagged": figures["flagged"],
    }


def _overview(db: Session, user: User, dataset: Dataset, include_filtered: bool) -> dict[str, Any]:
    """What the dataset page shows, each part from its service."""
    return {
        **_stats(db, user, dataset, include_filtered),
        "project": projects.require_project(db=db, user=user, project_id=dataset.project_id),
        "annotators": insights.annotator_progress(db=db, user=user, dataset_id=dataset.id),
        "agreement": insights.agreement(db=db, user=user, dataset_id=dataset.id),
        "members": projects.list_members(db=db, user=user, project_id=dataset.project_id),
        "kinds": startable_kinds(),
        "jobs": jobs.list_jobs(
            db=db, user=user, project_id=None, dataset_id=dataset.id, status=None, kind=None, limit=10
        ),
        "snapshots": snapshots.list_snapshots(db=db, user=user, dataset_id=dataset.id),
        "export_formats": EXPORT_FORMATS,
        "import_formats": IMPORT_FORMATS,
    }


@router.get("/ui/datasets/{dataset_id}")
def dataset_page(
    request: Request, dataset_id: int, user: PageUser, db: SessionDep, include_filtered: bool = False
) -> Response:
    """Stats as pictures, annotators, agreement, bulk actions, duplicate groups, jobs and snapshots."""
    dataset = datasets.require_dataset(db=db, user=user, dataset_id=dataset_id, min_role=Role.curator.value)
    return render(request, "dataset.html", user, **_overview(db, user, dataset, include_filtered))


@router.get("/ui/datasets/{dataset_id}/stats")
def stats_section(
    request: Request, dataset_id: int, user: PageUser, db: SessionDep, include_filtered: bool = False
) -> Response:
    """The page's stats section alone: dataset.js swaps it in after an import, without a reload."""
    dataset = datasets.require_dataset(db=db, user=user, dataset_id=dataset_id, min_role=Role.curator.value)
    return render(request, "dataset_stats.html", user, **_stats(db, user, dataset, include_filtered))


@router.get("/ui/datasets/{dataset_id}/bulk/count")
def bulk_count(request: Request, dataset_id: int, user: PageUser, db: SessionDep) -> JSONResponse:
    """How many records the bulk form's filter matches: the number its confirmation names."""
    flt = _filter_from(request.query_params)
    return JSONResponse({"count": insights.count_matching(db=db, user=user, dataset_id=dataset_id, flt=flt)})


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
        raise invalid(exc.errors(), prefix="filter") from exc


def _choice(form: FormData, name: str, allowed: tuple[str, ...], message: str) -> str:
    """A posted value that must be one of `allowed`."""
    value = str(form.get(name, ""))
    if value not in allowed:
        raise Invalid(message, field=name)
    return value


@router.get("/ui/datasets/{dataset_id}/records")
def records_page(
    request: Request, dataset_id: int, user: PageUser, db: SessionDep, cursor: str | None = None
) -> Response:
    """Browse a filter of the records, 50 at a time (keyset pages: fast at any depth)."""
    dataset = datasets.require_dataset(db=db, user=user, dataset_id=dataset_id, min_role=Role.curator.value)
    flt = _filter_from(request.query_params)
    rows, nxt = records.list_records(
        db=db, user=user, dataset_id=dataset_id, flt=flt, limit=50, cursor=cursor
    )
    query = [(k, v) for k, v in request.query_params.multi_items() if k != "cursor"]
    return render(
        request, "records.html", user, dataset=dataset, rows=rows, flt=flt, next_cursor=nxt, query=query
    )


@router.post("/ui/datasets/{dataset_id}/bulk")
def bulk(dataset_id: int, form: CheckedForm, user: PageUser, db: SessionDep) -> Response:
    """Set the status of every record of a filter (the whole filter, not a page)."""
    status = _choice(form, "target_status", STATUSES, "choose the status to set")
    reason = str(form.get("set_reason") or "").strip()[:64] or None
    n = records.bulk_set_status(
        db=db, user=user, dataset_id=dataset_id, flt=_filter_from(form), status=status, reason=reason
    )
    return redirect(f"/ui/datasets/{dataset_id}", f"{n} records set to {status}")


@router.post("/ui/datasets/{dataset_id}/groups/{anchor_id}")
def decide_group(
    dataset_id: int, anchor_id: int, form: CheckedForm, user: PageUser, db: SessionDep
) -> Response:
    status = _choice(form, "status", ("accepted", "rejected"), "status must be accepted or rejected")
    anchor = form.get("include_anchor") == "on"
    n = insights.decide_group(
        db=db, user=user, dataset_id=dataset_id, anchor_id=anchor_id, status=status, include_anchor=anchor
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


def _assignment(form: FormData) -> tuple[list[int], int, RecordFilter]:
    """The annotators, k and the records (default: pending) of an assignment form."""
    try:
        user_ids = [int(str(v)) for v in form.getlist("user_ids")]
        k = int(str(form.get("k") or "1"))
    except ValueError:
        raise Invalid("choose annotators and k") from None
    if not user_ids:
        raise Invalid("choose at least one annotator", field="user_ids")
    return user_ids, k, _filter_from(form) if form.getlist("status") else RecordFilter(status=["pending"])


@router.post("/ui/datasets/{dataset_id}/assign")
def assign(dataset_id: int, form: CheckedForm, user: PageUser, db: SessionDep) -> Response:
    user_ids, k, flt = _assignment(form)
    n, created = review.assign(
        db=db, user=user, dataset_id=dataset_id, user_ids=user_ids, k=k, flt=flt, limit=100_000
    )
    return redirect(f"/ui/datasets/{dataset_id}", f"{created} assignments over {n} records")
