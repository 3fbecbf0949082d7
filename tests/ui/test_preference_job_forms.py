"""The respond and rank_candidates job forms: found on the dataset's job forms, estimable, and a posted form
queues the job with its parameters."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.jobs.models import Job
from tests.factories import make_dataset, make_project, make_records, make_user
from tests.ui.test_pages import login


def test_respond_and_rank_forms_offer_the_teachers_and_an_estimate_and_queue_their_jobs(
    client: Any, db: Session, teacher: Any
) -> None:
    curator = make_user(db, "curator")
    ds = make_dataset(db, make_project(db, (curator, "curator")))
    make_records(db, ds, 2)
    token = login(client, curator)
    for kind in ("respond", "rank_candidates", "respond_local"):
        page = client.get(f"/ui/datasets/{ds.id}/jobs/new/{kind}")
        assert page.status_code == 200, (kind, page.text[:300])
        if kind != "respond_local":
            assert 'data-role="estimate"' in page.text and '<option value="fake"' in page.text
    posted = client.post(
        f"/ui/datasets/{ds.id}/jobs/new/respond",
        data={"csrf_token": token, "teacher": "fake", "n": "3", "temperature": "1.1"},
        follow_redirects=False,
    )
    assert posted.status_code == 303, posted.text
    job = db.query(Job).filter(Job.dataset_id == ds.id, Job.kind == "respond").one()
    assert job.params["n"] == 3 and job.params["temperature"] == 1.1 and job.params["teacher"] == "fake"
