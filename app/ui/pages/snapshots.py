"""Snapshots from the dataset page, and the comparison of two."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from app.deps import SessionDep
from app.pipeline import formats
from app.records.schemas import RecordFilter
from app.snapshots import service as snapshots
from app.ui.charts import Chart, bar_chart
from app.ui.web import CheckedForm, HtmlRoute, PageUser, redirect, render

router = APIRouter(route_class=HtmlRoute, include_in_schema=False)


@router.post("/ui/datasets/{dataset_id}/snapshots")
def create_snapshot(dataset_id: int, form: CheckedForm, user: PageUser, db: SessionDep) -> Response:
    flt = RecordFilter.model_validate({"status": [s for s in form.getlist("status") if s] or ["accepted"]})
    name, description = str(form.get("name", "")).strip(), str(form.get("description", ""))
    snap = snapshots.create_snapshot(
        db=db, user=user, dataset_id=dataset_id, name=name, description=description, flt=flt
    )
    message = f"snapshot {snap.name} created: {snap.record_count} records"
    return redirect(f"/ui/datasets/{dataset_id}", message)


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


def _charts(stats: dict[str, Any]) -> list[Chart]:
    rouge = stats.get("max_rouge_l_hist") or {}
    return [
        bar_chart("Records by status", stats.get("by_status", {})),
        bar_chart("By source", stats.get("by_source", {})),
        bar_chart("By label (top 50)", stats.get("by_label", {})),
        bar_chart("Prompt length (chars, from)", stats.get("prompt_chars_hist", {}), horizontal=False),
        bar_chart("Response length (chars, from)", stats.get("response_chars_hist", {}), horizontal=False),
        bar_chart(
            "Max ROUGE-L to the rest of the snapshot",
            {} if "skipped" in rouge else rouge,
            horizontal=False,
        ),
        bar_chart("Nearest-neighbour ROUGE-L (dedup)", stats.get("nn_rouge_hist", {}), horizontal=False),
    ]


@router.get("/ui/snapshots/{snapshot_id}")
def snapshot_page(request: Request, snapshot_id: int, user: PageUser, db: SessionDep) -> Response:
    """A snapshot's stats (counts, lengths, labels, sources, ROUGE-L) and its downloads."""
    view = snapshots.snapshot_view(db=db, user=user, snapshot_id=snapshot_id)
    return render(
        request,
        "snapshot.html",
        user,
        **view,
        charts=_charts(view["stats"]),
        export_formats=list(formats.ALL_EXPORTERS),
    )
