"""POST /evaluations/estimate prices the evaluation a body describes: judge calls (pairs x prompts x 2 orders,
+ single scores when asked), teacher systems' answer calls, tokens and cost at the teachers' prices; nothing
is stored and no teacher is called. A bad body is a 4xx naming the field, as creating would be. The form's
Estimate button shows it."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest
from sqlalchemy import func, select

from app.evaluation.models import Evaluation
from app.jobs.models import Job
from app.pipeline.llm import approx_tokens
from tests.conftest import serve_from
from tests.factories import make_dataset, make_project, make_records, make_user, token_for
from tests.ui.test_pages import login

PRICE_IN, PRICE_OUT = 0.001, 0.002  # the fake teacher's prices per 1k tokens (tests/conftest.py)


@pytest.fixture
def setup(db, teacher) -> dict[str, Any]:
    curator = make_user(db, "curator")
    project = make_project(db, (curator, "curator"))
    dataset = make_dataset(db, project)
    make_records(db, dataset, 3)
    db.commit()
    return {"curator": curator, "h": token_for(db, curator), "dataset": dataset.id, "project": project.id}


def _stats(teacher: Any) -> dict[str, Any]:
    with urllib.request.urlopen(teacher.url + "/admin/stats", timeout=5) as resp:
        stats: dict[str, Any] = json.loads(resp.read())
    return stats


def _body(setup: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {
        "dataset_id": setup["dataset"],
        "systems": [
            {"kind": "teacher", "teacher": "fake", "name": "a"},
            {"kind": "teacher", "teacher": "fake", "name": "b"},
            {"kind": "teacher", "teacher": "fake", "name": "c"},
        ],
        "judge_teacher": "fake",
        "generation": {"max_new_tokens": 100},
        "judge_max_tokens": 50,
        **changes,
    }


def test_the_estimate_counts_judge_and_answer_calls_and_prices_them(client, db, setup, teacher):
    before = _stats(teacher)["requests"]
    resp = client.post("/api/v1/evaluations/estimate", json=_body(setup, scores=True), headers=setup["h"])
    assert resp.status_code == 200, resp.text
    est = resp.json()
    # 3 systems: 3 pairs x 3 prompts x 2 orders, + 3 prompts x 3 systems scored
    assert (est["prompts"], est["systems"], est["pairs"]) == (3, 3, 3)
    assert est["judge_calls"] == 3 * 3 * 2 + 3 * 3
    assert est["answer_calls"] == 3 * 3 and est["local_answers"] == 0
    assert est["total_calls"] == est["judge_calls"] + est["answer_calls"]
    by = {(x["purpose"], x["system"]): x for x in est["lines"]}
    assert by[("judge_pairs", None)]["calls"] == 18 and by[("judge_scores", None)]["calls"] == 9
    assert by[("judge_pairs", None)]["tokens_out"] == 18 * 50
    answers = by[("teacher_answers", "a")]
    assert answers["calls"] == 3 and answers["tokens_out"] == 3 * 100
    assert answers["tokens_in"] == sum(approx_tokens(f"Instruction number {i}") for i in range(3))
    # Each judge prompt holds both answers at their longest
    assert by[("judge_pairs", None)]["tokens_in"] > 18 * 2 * 100
    for line in est["lines"]:
        expected = line["tokens_in"] * PRICE_IN / 1000 + line["tokens_out"] * PRICE_OUT / 1000
        assert line["cost_usd"] == pytest.approx(expected)
    assert est["estimated_cost_usd"] == pytest.approx(sum(x["cost_usd"] for x in est["lines"]))
    assert est["tokens_in"] == sum(x["tokens_in"] for x in est["lines"])
    assert "upper bound" in est["basis"]
    # Nothing stored, no teacher called
    assert db.scalar(select(func.count()).select_from(Evaluation)) == 0
    assert db.scalar(select(func.count()).select_from(Job)) == 0
    assert _stats(teacher)["requests"] == before


def test_without_scores_only_pairs_are_judged_and_max_prompts_counts(client, setup):
    resp = client.post(
        "/api/v1/evaluations/estimate",
        json=_body(setup, max_prompts=2, systems=_body(setup)["systems"][:2]),
        headers=setup["h"],
    )
    assert resp.status_code == 200, resp.text
    est = resp.json()
    assert (est["prompts"], est["pairs"], est["judge_calls"], est["answer_calls"]) == (2, 1, 4, 4)
    assert [x["purpose"] for x in est["lines"]] == ["judge_pairs", "teacher_answers", "teacher_answers"]


@pytest.mark.parametrize(
    ("changes", "status", "field"),
    [
        ({"judge_teacher": "nobody"}, 422, "judge_teacher"),
        ({"systems": [{"kind": "teacher", "teacher": "fake"}]}, 422, "systems"),
        (
            {"systems": [{"kind": "base", "base_model": "../etc"}, {"kind": "teacher", "teacher": "fake"}]},
            422,
            "systems.0.base_model",
        ),
        ({"generation": {"max_new_tokens": 0}}, 422, "generation"),
        ({"dataset_id": 999999999}, 404, None),
    ],
)
def test_a_bad_body_is_a_4xx_naming_the_field(client, setup, changes, status, field):
    resp = client.post("/api/v1/evaluations/estimate", json=_body(setup, **changes), headers=setup["h"])
    assert resp.status_code == status, resp.text
    if field:
        assert field in resp.text


def test_annotators_may_not_estimate(client, db, setup):
    annotator = make_user(db, "annotator")
    from app.projects.models import ProjectMember

    db.add(ProjectMember(project_id=setup["project"], user_id=annotator.id, role="annotator"))
    db.commit()
    resp = client.post("/api/v1/evaluations/estimate", json=_body(setup), headers=token_for(db, annotator))
    assert resp.status_code in (403, 404)


@pytest.mark.browser
def test_the_forms_estimate_button_shows_calls_and_cost(client, db, setup, browser_page):
    login(client, setup["curator"])
    serve_from(client, browser_page)
    page = browser_page
    page.goto(f"http://testserver/ui/projects/{setup['project']}/evaluations/new")
    page.select_option('select[name="system_0"]', "teacher:fake")
    page.fill('input[name="system_name_0"]', "alpha")
    page.select_option('select[name="system_1"]', "teacher:fake")
    page.fill('input[name="system_name_1"]', "beta")
    page.select_option('select[name="prompt_set"]', f"dataset:{setup['dataset']}")
    page.click('[data-role="estimate"]')
    page.locator('[data-role="estimate-result"]').wait_for()
    assert (
        page.locator('[data-role="estimate-calls"]')
        .inner_text()
        .startswith("12 (6 judge, 6 teacher answers)")
    )
    assert page.locator('[data-role="estimate-cost"]').inner_text().startswith("at most $")
    assert db.scalar(select(func.count()).select_from(Evaluation)) == 0
    # A refusal names the row, as Start would
    page.select_option('select[name="system_1"]', "")
    page.click('[data-role="estimate"]')
    page.locator('[data-role="estimate-error"]').wait_for()
    assert "at least 2 systems" in page.locator('[data-role="estimate-error"]').inner_text()
