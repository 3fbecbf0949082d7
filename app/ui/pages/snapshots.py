"""Snapshots from the dataset page, and the comparison of two."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from app.deps import SessionDep
from app.records.schemas import RecordFilter
from app.snapshots import service as snapshots
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
