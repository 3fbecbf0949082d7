"""Job forms: the Estimate button prices a generation job before it starts (in a real browser), the teacher is
chosen among the configured ones, quality rules are ticked from a list with their descriptions; the server's
validation still answers a bad post with a 422 page naming the field."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.generation.models import LlmCacheEntry, LlmCall
from app.jobs.models import Job
from app.pipeline.rules import RULES
from tests.conftest import serve_from
from tests.factories import make_dataset, make_project, make_records, make_user, run_job_now
from tests.ui.test_pages import login

SHOTS = os.environ.get("IF_UI_SCREENSHOTS")


def shot(page: Any, name: str) -> None:
    """Refresh docs/screenshots when IF_UI_SCREENSHOTS names the folder."""
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / name), full_page=True)


def _curated_dataset(db: Session) -> tuple[Any, Any]:
    curator = make_user(db, "curator")
    dataset = make_dataset(db, make_project(db, (curator, "curator")), name="support answers")
    make_records(db, dataset, 8, source="seed")
    return curator, dataset


def _jobs_of(db: Session, dataset_id: int) -> int:
    return int(db.scalar(select(func.count(Job.id)).where(Job.dataset_id == dataset_id)) or 0)


def test_estimate_shows_cost_tokens_and_calls_of_the_form_as_filled_and_starts_nothing(
    client: Any, db: Session, browser_page: Any, teacher: Any
) -> None:
    curator, dataset = _curated_dataset(db)
    login(client, curator)
    serve_from(client, browser_page)
    browser_page.goto(f"http://testserver/ui/datasets/{dataset.id}/jobs/new/self_instruct")
    picked = browser_page.locator("select[name=teacher] option:checked")
    assert picked.inner_text() == "fake — fake-model · $0.001 in / $0.002 out per 1k tokens"
    browser_page.fill("input[name=target]", "30")
    browser_page.click("[data-role=estimate]")
    browser_page.wait_for_selector("[data-role=estimate-result]")
    # 30 tasks to keep: ceil(30 / 3) instruction prompts + 2 calls per task (classification, instances).
    assert browser_page.inner_text("[data-role=estimate-calls]") == "≈ 70 (from 3 sampled)"
    cost = browser_page.inner_text("[data-role=estimate-cost]")
    total, per_call = (float(x) for x in re.findall(r"\$([0-9.]+)", cost))
    assert per_call > 0 and abs(total - 70 * per_call) < 1e-4 + 70 * 1e-6  # both as shown, rounded
    tokens = browser_page.inner_text("[data-role=estimate-tokens]")
    assert re.fullmatch(r"≈ [\d,]+ in \+ [\d,]+ out \([\d,]+ \+ [\d,]+ a call\)", tokens)
    assert teacher.stats()["requests"] == 3
    assert _jobs_of(db, dataset.id) == 0
    assert browser_page.url.endswith("/jobs/new/self_instruct")
    shot(browser_page, "job_form.png")


def test_estimate_refused_for_an_unknown_teacher_says_why_beside_the_button(
    client: Any, db: Session, browser_page: Any
) -> None:
    curator, dataset = _curated_dataset(db)
    login(client, curator)
    serve_from(client, browser_page)
    browser_page.goto(f"http://testserver/ui/datasets/{dataset.id}/jobs/new/self_instruct")
    # No teacher configured: the field takes a name and says where teachers are set.
    assert "set IF_TEACHERS" in browser_page.inner_text("[data-field=teacher]")
    browser_page.fill("input[name=teacher]", "gpt")
    browser_page.click("[data-role=estimate]")
    error = browser_page.wait_for_selector("[data-role=estimate-error]")
    assert error.inner_text() == (
        "Could not estimate: unknown teacher 'gpt'; known: none configured (set IF_TEACHERS)"
    )
    assert _jobs_of(db, dataset.id) == 0


def test_only_generation_forms_that_can_be_priced_have_an_estimate_button(client: Any, db: Session) -> None:
    curator, dataset = _curated_dataset(db)
    login(client, curator)
    base = f"/ui/datasets/{dataset.id}/jobs/new"
    assert 'data-role="estimate"' in client.get(f"{base}/self_instruct").text
    assert 'data-role="estimate"' not in client.get(f"{base}/dedup").text


def test_the_teacher_is_chosen_among_the_configured_ones_and_an_unknown_one_is_refused_by_name(
    client: Any, db: Session, teacher: Any
) -> None:
    curator, dataset = _curated_dataset(db)
    token = login(client, curator)
    url = f"/ui/datasets/{dataset.id}/jobs/new/evol"
    page = client.get(url).text
    assert re.search(r'<select name="teacher"><option value="fake" selected>fake — fake-model', page)
    refused = client.post(url, data={"csrf_token": token, "teacher": "nope", "rounds": "1"})
    assert refused.status_code == 422
    assert "unknown teacher &#39;nope&#39;; known: fake" in refused.text
    assert _jobs_of(db, dataset.id) == 0
    started = client.post(
        url, data={"csrf_token": token, "teacher": "fake", "rounds": "2"}, follow_redirects=False
    )
    assert started.status_code == 303
    job = db.scalars(select(Job).where(Job.dataset_id == dataset.id)).one()
    assert job.params["teacher"] == "fake" and job.params["rounds"] == 2


def test_rules_are_ticked_from_a_list_with_their_descriptions(client: Any, db: Session) -> None:
    curator, dataset = _curated_dataset(db)
    token = login(client, curator)
    url = f"/ui/datasets/{dataset.id}/jobs/new/rules"
    page = client.get(url).text
    assert '<textarea name="rules"' not in page
    for code in RULES:
        assert f'name="rules" value="{code}" checked' in page
    assert "Refusals and AI disclaimers" in page  # each rule's description beside its box
    picked = ["refusal", "empty_output"]
    started = client.post(
        url,
        data={"csrf_token": token, "rules": picked, "scope": '{"status": ["pending"]}'},
        follow_redirects=False,
    )
    assert started.status_code == 303, started.text
    job = db.scalars(select(Job).where(Job.dataset_id == dataset.id)).one()
    assert job.params["rules"] == picked


def test_rules_none_ticked_runs_the_datasets_selection_and_an_unknown_code_is_refused_by_name(
    client: Any, db: Session
) -> None:
    curator, dataset = _curated_dataset(db)
    dataset.settings = {"rules": {"enabled": ["refusal"]}}
    db.flush()
    token = login(client, curator)
    url = f"/ui/datasets/{dataset.id}/jobs/new/rules"
    page = client.get(url).text
    assert 'value="refusal" checked' in page and 'value="empty_output" >' in page
    refused = client.post(url, data={"csrf_token": token, "rules": ["refusal", "no_such_rule"]})
    assert refused.status_code == 422 and "rules: unknown no_such_rule" in refused.text
    assert 'value="refusal" checked' in refused.text  # the form shows what was posted
    assert _jobs_of(db, dataset.id) == 0
    started = client.post(url, data={"csrf_token": token}, follow_redirects=False)
    assert started.status_code == 303
    assert db.scalars(select(Job).where(Job.dataset_id == dataset.id)).one().params["rules"] is None


def test_estimate_with_a_teacher_that_does_not_answer_says_so_without_a_traceback(
    client: Any, db: Session, monkeypatch: Any
) -> None:
    import json

    from app.config import get_settings
    from tests.procs import free_port

    down = {"name": "down", "base_url": f"http://127.0.0.1:{free_port()}/v1", "model": "m"}
    down |= {"max_retries": 0, "timeout_s": 2, "breaker_failures": 1}
    monkeypatch.setattr(get_settings(), "teachers", json.dumps([down]))
    curator, dataset = _curated_dataset(db)
    token = login(client, curator)
    url = f"/ui/datasets/{dataset.id}/jobs/new/self_instruct/estimate"
    answer = client.post(url, data={"csrf_token": token, "teacher": "down"})
    assert answer.status_code == 503  # the teacher's fault, not the request's: as a database that is down
    assert answer.json()["detail"] == (
        "teacher 'down' (m) did not answer, so nothing could be estimated; check that it is up "
        "(docs/teachers.md) and try again"
    )
    api = client.post(
        "/api/v1/generation/estimate",
        json={"dataset_id": dataset.id, "kind": "self_instruct", "params": {"teacher": "down"}},
        headers={"X-CSRF-Token": token},
    )
    assert api.status_code == 503 and "127.0.0.1" not in api.text  # where it is served is for admins
    assert _jobs_of(db, dataset.id) == 0


@pytest.mark.parametrize("backend", ["postgresql"])
@pytest.mark.parametrize(("kind", "params", "calls"), [("judge", {}, 5), ("evol", {"rounds": 2}, 3 * 5 * 2)])
def test_evol_and_judge_forms_estimate_too_and_their_jobs_reuse_the_answers_paid_for(
    committed: Any, client: Any, teacher: Any, kind: str, params: dict[str, Any], calls: int
) -> None:
    with Session(committed, expire_on_commit=False) as db:
        curator = make_user(db, "curator")
        dataset = make_dataset(db, make_project(db, (curator, "curator")))
        make_records(db, dataset, 5)
        db.commit()
        dataset_id = dataset.id
        db.expunge(curator)
    token = login(client, curator)
    url = f"/ui/datasets/{dataset_id}/jobs/new/{kind}"
    assert 'data-role="estimate"' in client.get(url).text
    answer = client.post(f"{url}/estimate", data={"csrf_token": token, "teacher": "fake", **params})
    assert answer.status_code == 200, answer.text
    estimate = answer.json()
    assert estimate["sampled_calls"] == 3 and estimate["total_calls"] == calls
    assert estimate["estimated_cost_usd"] == pytest.approx(calls * estimate["cost_per_call_usd"])
    assert teacher.stats()["requests"] == 3
    with Session(committed) as db:
        estimated = set(db.scalars(select(LlmCacheEntry.key)))
    assert len(estimated) == 3
    job = run_job_now(committed, curator, dataset_id, kind, {"teacher": "fake", **params})
    with Session(committed) as db:
        calls_of_job = db.execute(select(LlmCall.key, LlmCall.cached).where(LlmCall.job_id == job.id)).all()
    # The estimate's three calls were the job's own first calls: answered from the cache, not paid again.
    assert estimated <= {key for key, cached in calls_of_job if cached}
    assert not estimated & {key for key, cached in calls_of_job if not cached}


def test_an_evol_estimate_without_operations_is_refused_by_name_not_a_server_error(
    client: Any, db: Session, teacher: Any
) -> None:
    curator, dataset = _curated_dataset(db)
    token = login(client, curator)
    url = f"/ui/datasets/{dataset.id}/jobs/new/evol/estimate"
    answer = client.post(url, data={"csrf_token": token, "teacher": "fake", "extra": '{"operations": []}'})
    assert answer.status_code == 422
    assert answer.json() == {
        "detail": "Evol-Instruct needs at least one operation",
        "field": "params.extra.operations",
    }
    assert teacher.stats()["requests"] == 0


def test_rules_posted_as_the_apis_json_list_start_the_same_job(client: Any, db: Session) -> None:
    curator, dataset = _curated_dataset(db)
    token = login(client, curator)
    url = f"/ui/datasets/{dataset.id}/jobs/new/rules"
    started = client.post(url, data={"csrf_token": token, "rules": '["refusal"]'}, follow_redirects=False)
    assert started.status_code == 303
    assert db.scalars(select(Job).where(Job.dataset_id == dataset.id)).one().params["rules"] == ["refusal"]
    broken = client.post(url, data={"csrf_token": token, "rules": '["refusal"'})
    assert broken.status_code == 422 and "rules: " in broken.text
