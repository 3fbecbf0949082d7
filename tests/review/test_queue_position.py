"""The review page's "n of N": where the page opens in the annotator's queue, counted up to a cap."""

from __future__ import annotations

from sqlalchemy import insert
from sqlalchemy.orm import Session

from app.records.models import Record
from app.review import service as review
from tests.factories import make_dataset, make_project, make_records, make_user


def test_position_counts_the_queue_before_the_opened_record_and_a_decided_one_counts_in_its_place(
    db: Session,
) -> None:
    ann = make_user(db, "annotator")
    ds = make_dataset(db, make_project(db, (ann, "annotator")))
    pending = make_records(db, ds, 5)
    decided = make_records(db, ds, 1, status="accepted")[0]
    make_records(db, ds, 2, flagged=True)  # not in anyone's queue

    def at(record_id: int | None) -> tuple[int, int]:
        pos = review.queue_position(db=db, user=ann, dataset_id=ds.id, record_id=record_id)
        assert not pos.before_more and not pos.total_more
        return pos.before, pos.total

    assert at(None) == (0, 5)
    assert at(pending[2].id) == (2, 5)
    assert at(decided.id) == (5, 6)


def test_past_the_cap_the_count_stops_and_says_it_is_a_lower_bound(db: Session) -> None:
    ann = make_user(db, "annotator")
    ds = make_dataset(db, make_project(db, (ann, "annotator")))
    cap = review.POSITION_CAP
    db.execute(insert(Record), [{"dataset_id": ds.id, "instruction": f"t{i}"} for i in range(cap + 5)])
    last = max(r.id for r in db.query(Record.id).filter(Record.dataset_id == ds.id))
    pos = review.queue_position(db=db, user=ann, dataset_id=ds.id, record_id=last)
    assert (pos.before, pos.before_more, pos.total, pos.total_more) == (cap, True, cap, True)
