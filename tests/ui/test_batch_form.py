"""The job forms offer batch mode (issue 21) only with a teacher that has a batch API, and the Estimate
then prices the job at the batch API's prices (in a real browser)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import get_settings
from app.jobs.models import Job
from tests.conftest import serve_from
from tests.factories import make_dataset, make_project, make_records, make_user
from tests.fake_teacher import FakeTeacher
from tests.ui.test_pages import login

PRICES = {"price_in_per_1k": 0.001, "price_out_per_1k": 0.002}


@pytest.fixture
def two_teachers(monkeypatch: pytest.MonkeyPatch) -> Any:
    with FakeTeacher.start() as t:
        common = {"base_url": t.base_url, "max_retries": 1, "timeout_s": 30, **PRICES}
        config = [
            {"name": "sync", "model": "fake-sync", **common},
            {"name": "batch", "model": "fake-batch", "batch": True, **common},
        ]
        monkeypatch.setattr(get_settings(), "teachers", json.dumps(config))
        yield t


def test_the_batch_box_shows_only_with_a_batch_teacher_and_the_estimate_is_at_batch_prices(
    client: Any, db: Session, browser_page: Any, two_teachers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    curator = make_user(db, "curator")
    dataset = make_dataset(db, make_project(db, (curator, "curator")))
    make_records(db, dataset, 6)
    token = login(client, curator)
    serve_from(client, browser_page)
    browser_page.goto(f"http://testserver/ui/datasets/{dataset.id}/jobs/new/rewrite")
    box = browser_page.locator("[data-field=batch]")
    browser_page.select_option("select[name=teacher]", "sync")
    assert not box.is_visible()
    browser_page.select_option("select[name=teacher]", "batch")
    assert box.is_visible()
    assert "Use the batch API (about half price, answers within 24 h)" in box.inner_text()

    def estimate() -> tuple[float, str]:
        browser_page.click("[data-role=estimate]")
        shown = browser_page.wait_for_selector("[data-role=estimate-cost]").inner_text()
        browser_page.evaluate("document.querySelector('[data-role=estimate-out]').replaceChildren()")
        return float(re.findall(r"\$([0-9.]+)", shown)[0]), shown

    full, _ = estimate()
    browser_page.check("input[name=batch]")
    half, shown = estimate()
    assert shown.endswith("at batch API prices") and half == pytest.approx(full / 2, abs=1e-4)
    # Started as posted: the box ticked with the batch teacher.
    started = client.post(
        f"/ui/datasets/{dataset.id}/jobs/new/rewrite",
        data={"csrf_token": token, "teacher": "batch", "batch": "on", "preset": "complete"},
        follow_redirects=False,
    )
    assert started.status_code == 303, started.text
    job = db.scalars(select(Job).where(Job.dataset_id == dataset.id)).one()
    assert job.params["teacher"] == "batch" and job.params["batch"] is True
    # With no teacher that has a batch API, the form (the judge's here) leaves the box out.
    config = json.loads(get_settings().teachers)[:1]
    monkeypatch.setattr(get_settings(), "teachers", json.dumps(config))
    page = client.get(f"/ui/datasets/{dataset.id}/jobs/new/judge").text
    assert 'name="override_human"' in page and 'name="batch"' not in page


def test_self_instructs_batch_spares_shows_only_while_the_batch_box_is_ticked(
    client: Any, db: Session, browser_page: Any, two_teachers: Any
) -> None:
    curator = make_user(db, "curator")
    dataset = make_dataset(db, make_project(db, (curator, "curator")))
    login(client, curator)
    serve_from(client, browser_page)
    browser_page.goto(f"http://testserver/ui/datasets/{dataset.id}/jobs/new/self_instruct")
    spares = browser_page.locator("[data-field=batch_spares]")
    browser_page.select_option("select[name=teacher]", "batch")
    assert browser_page.locator("[data-field=batch]").is_visible() and not spares.is_visible()
    assert browser_page.locator("[data-field=batch_size]").is_visible()  # rounds' prompts: not batch mode's
    browser_page.check("input[name=batch]")
    assert spares.is_visible() and spares.locator("input").input_value() == "0.1"
    browser_page.select_option("select[name=teacher]", "sync")  # unticks the box, so hides the spares
    assert not spares.is_visible()
