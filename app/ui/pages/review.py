"""The annotators' keyboard review page and a record's history."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy.orm import Session

from app.auth.models import User
from app.datasets import service as datasets
from app.deps import SessionDep
from app.evaluation import service as evaluations
from app.records import service as records
from app.review import service as review
from app.ui.web import HtmlRoute, PageUser, render

router = APIRouter(route_class=HtmlRoute, include_in_schema=False)

PREFETCH = 5


@router.get("/ui/datasets/{dataset_id}/review")
def review_page(
    request: Request,
    dataset_id: int,
    user: PageUser,
    db: SessionDep,
    record: int | None = None,
    compare: bool = False,
) -> Response:
    """The keyboard review page; the first records (and the ones after) ride along in the page. With
    `compare`, its queue is the records with candidates you have not judged yet."""
    dataset = datasets.require_dataset(db=db, user=user, dataset_id=dataset_id)
    data = _page_data(db, user, dataset_id, record, compare)
    return render(request, "review.html", user, dataset=dataset, data=data)


def _page_data(db: Session, user: User, dataset_id: int, record: int | None, compare: bool) -> dict[str, Any]:
    """What the page's script starts from: the first records of the queue and where the reviewer is in it."""
    items = review.opening_items(
        db=db, user=user, dataset_id=dataset_id, record_id=record, limit=PREFETCH, compare=compare
    )
    return {
        "dataset_id": dataset_id,
        "prefetch": PREFETCH,
        "compare": compare,
        "items": [i.model_dump(mode="json") for i in items],
        "position": review.queue_position(
            db=db, user=user, dataset_id=dataset_id, record_id=record, compare=compare
        ).model_dump(),
        "open_assignments": review.open_assignments(db=db, user=user, dataset_id=dataset_id),
    }


@router.get("/ui/records/{record_id}/history")
def history_page(request: Request, record_id: int, user: PageUser, db: SessionDep) -> Response:
    """Edits and decisions, newest first; then the record's lineage (snapshots, runs, evaluations)."""
    record = records.get_record(db=db, user=user, record_id=record_id)
    history = review.timeline(db=db, user=user, record_id=record_id)
    lineage = evaluations.record_lineage(db=db, user=user, record_id=record_id)
    return render(request, "history.html", user, record=record, history=history, lineage=lineage)
