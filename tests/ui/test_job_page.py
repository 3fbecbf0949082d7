"""The job pages, in a real browser: a paused job is resumed from its page; a job reads in words (start,
duration, attempts once it ran, its dataset's name, counters and result as tables) and its live update
reads exactly as the page reloaded; the jobs list names datasets and durations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.jobs.models import Job
from app.ui.web import FLASH_COOKIE
from tests.conftest import serve_from
from tests.factories import make_dataset, make_project, make_user
from tests.ui.test_job_forms import shot
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


def _started_from_the_form(client: Any, db: Session, browser_page: Any) -> Job:
    """A dedup job started from its form in the browser (the page then says "dedup job N queued")."""
    curator = make_user(db, "curator")
    dataset = make_dataset(db, make_project(db, (curator, "curator")), name="support answers")
    login(client, curator)
    serve_from(client, browser_page)
    browser_page.goto(f"http://testserver/ui/datasets/{dataset.id}/jobs/new/dedup")
    browser_page.click("main button[type=submit]")
    browser_page.wait_for_selector(".job-detail")
    job = db.scalars(select(Job).where(Job.dataset_id == dataset.id)).one()
    return job


def _finish(db: Session, job: Job) -> None:
    """What a worker writes when a dedup job ends (workers.runner and the dedup handler)."""
    start = datetime(2026, 11, 30, 21, 4, 5, tzinfo=UTC)
    job.status, job.attempts = "succeeded", 1
    job.started_at, job.finished_at = start, start + timedelta(seconds=65)
    job.progress_done = job.progress_total = 50
    job.counters = {"scanned": 50, "kept": 11, "rejected_by_reason": {"rouge_dup": 39}, "share": 0.22}
    job.result = {"scanned": 50, "kept": 11, "examples": [{"id": 1}, {"id": 2}], "codes": ["a", "b"]}
    db.flush()


def test_a_job_page_reads_in_words_and_its_live_update_reads_as_the_page_reloaded(
    client: Any, db: Session, browser_page: Any
):
    job = _started_from_the_form(client, db, browser_page)
    page = browser_page
    assert page.inner_text("main > .flash") == f"dedup job {job.id} queued"
    assert page.inner_text("[data-role=dataset]") == "support answers"
    # Not run yet: no start, duration nor attempts to speak of.
    for role in ("started", "duration", "attempts", "error"):
        assert page.locator(f"[data-role={role}]").is_hidden()
    _finish(db, job)
    page.wait_for_selector("[data-role=status]:text-is('succeeded')")
    assert page.locator("main > .flash").count() == 0  # the notice went with the job's end
    assert page.inner_text("[data-role=started]") == "2026-11-30 21:04:05 UTC"
    assert page.inner_text("[data-role=duration]") == "1 min 05 s"
    assert page.inner_text("[data-role=attempts]") == "1"
    counters = page.locator("[data-role=counters] tr").all_inner_texts()
    assert [" ".join(c.split()) for c in counters] == [
        "scanned 50",
        "kept 11",
        "rejected by reason",
        "rouge_dup 39",
        "share 0.22",
    ]
    result = page.locator("[data-role=result] tr").all_inner_texts()
    assert [" ".join(r.split()) for r in result] == [
        "scanned 50",
        "kept 11",
        "examples 2 items",
        "codes a, b",
    ]
    live = page.inner_text(".job-detail")
    assert "{" not in live.split("Result as JSON")[0]  # no dict repr above the raw JSON
    page.goto(f"http://testserver/ui/jobs/{job.id}")  # (the form's URL would post it again)
    assert page.inner_text(".job-detail") == live
    shot(page, "job.png")


def test_the_jobs_list_names_the_dataset_and_says_how_long_each_job_ran(client: Any, db: Session):
    curator = make_user(db, "curator")
    dataset = make_dataset(db, make_project(db, (curator, "curator")), name="support answers")
    job = Job(
        project_id=dataset.project_id,
        dataset_id=dataset.id,
        kind="dedup",
        queue="default",
        params={},
        created_by=curator.id,
    )
    db.add(job)
    _finish(db, job)
    login(client, curator)
    page = client.get("/ui/jobs").text
    row = page.split(f'data-job-id="{job.id}"')[1].split("</tr>")[0]
    assert f'<a href="/ui/datasets/{dataset.id}">support answers</a>' in row
    assert "1 min 05 s" in row and "2026-11-30 21:04:05 UTC" in row
    assert "scanned: 50 · kept: 11 · rejected by reason: rouge_dup 39 · share: 0.22" in row


def test_the_jobs_list_live_update_reads_as_the_list_reloaded(client: Any, db: Session, browser_page: Any):
    curator = make_user(db, "curator")
    dataset = make_dataset(db, make_project(db, (curator, "curator")), name="support answers")
    job = Job(
        project_id=dataset.project_id,
        dataset_id=dataset.id,
        kind="dedup",
        queue="default",
        params={},
        created_by=curator.id,
    )
    db.add(job)
    db.flush()
    login(client, curator)
    serve_from(client, browser_page)
    browser_page.goto("http://testserver/ui/jobs")
    row = browser_page.locator(f'tr[data-job-id="{job.id}"]')
    cells = row.locator("td").count()
    _finish(db, job)
    browser_page.wait_for_selector(f'tr[data-job-id="{job.id}"] [data-role=status]:text-is("succeeded")')
    assert row.locator("td:visible").count() == cells  # every column still there, none hidden
    live = row.inner_text()
    assert "rejected by reason: rouge_dup 39" in live and "1 min 05 s" in live
    browser_page.goto("http://testserver/ui/jobs")
    assert row.inner_text() == live


def test_a_job_that_ended_before_its_page_loaded_shows_no_queued_notice(
    client: Any, db: Session, browser_page: Any
):
    curator = make_user(db, "curator")
    dataset = make_dataset(db, make_project(db, (curator, "curator")))
    job = Job(
        project_id=dataset.project_id,
        dataset_id=dataset.id,
        kind="dedup",
        queue="default",
        params={},
        created_by=curator.id,
    )
    db.add(job)
    _finish(db, job)
    login(client, curator)
    # What the form's redirect leaves for the next page (app.ui.web.redirect's flash cookie).
    client.cookies.set(FLASH_COOKIE, quote(f"dedup job {job.id} queued"))
    serve_from(client, browser_page)
    browser_page.goto(f"http://testserver/ui/jobs/{job.id}")
    assert browser_page.inner_text("[data-role=status]") == "succeeded"
    assert browser_page.locator("main > .flash").count() == 0
