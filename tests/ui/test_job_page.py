"""The job page: a paused job can be resumed from it, in a real browser."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.jobs.models import Job
from tests.conftest import serve_from
from tests.factories import make_dataset, make_project, make_user
from tests.ui.test_pages import login


def test_a_paused_job_is_resumed_from_its_page(client: Any, db: Session, browser_page: Any):
    curator = make_user(db, "curator")
    project = make_project(db, (curator, "curator"))
    dataset = make_dataset(db, project)
    job = Job(
        project_id=project.id,
        dataset_id=dataset.id,
        kind="dedup",
        queue="default",
        params={},
        status="paused",
        error="paused: the teacher is unavailable; resume the job when it is back",
        created_by=curator.id,
    )
    db.add(job)
    db.flush()
    login(client, curator)
    serve_from(client, browser_page)
    browser_page.goto(f"http://testserver/ui/jobs/{job.id}")
    status = browser_page.locator('[data-role="status"]')
    assert status.inner_text() == "paused"
    browser_page.click(f'[data-resume="{job.id}"]')
    browser_page.wait_for_function(
        "document.querySelector('[data-role=status]').textContent !== 'paused'", timeout=15_000
    )
    assert status.inner_text() in ("queued", "running", "succeeded")
    assert browser_page.locator("[data-resume]").count() == 0
    db.expire_all()
    assert db.get(Job, job.id).status != "paused"  # type: ignore[union-attr]
