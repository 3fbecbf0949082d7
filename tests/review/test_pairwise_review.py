"""People judging candidates on the review page: two side by side (1 / 2 / = / b), three or more ranked by
their numbers then Enter; the judgments in the record's timeline; agreement on pairs between annotators and
with the LLM judge."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.preferences import service as preferences
from app.preferences.models import Candidate, PreferenceJudgment
from app.records.models import Record
from tests.conftest import serve_from
from tests.factories import make_dataset, make_project, make_records, make_user, token_for
from tests.ui.test_pages import login

BASE = "http://testserver"
XSS = "<img src=x onerror=\"window.__xss = 'candidate'\">"


def _candidates(db: Session, record: Record, texts: list[str]) -> list[Candidate]:
    out = []
    for i, text in enumerate(texts):
        cand = preferences.add_candidate(
            db=db, record=record, content=text, source="teacher", model="teacher-model", gen_key=f"t:{i}"
        )
        assert cand is not None
        out.append(cand)
    return out


@pytest.fixture
def world(db: Session) -> dict[str, Any]:
    annotator = make_user(db, "annotator")
    other = make_user(db, "annotator")
    curator = make_user(db, "curator")
    ds = make_dataset(
        db, make_project(db, (annotator, "annotator"), (other, "annotator"), (curator, "curator"))
    )
    two, three = make_records(db, ds, 2)
    return {
        "annotator": annotator,
        "other": other,
        "curator": curator,
        "ds": ds,
        "two": two,
        "three": three,
        "pair": _candidates(db, two, [f"Short answer {XSS}", "A longer, better answer."]),
        "trio": _candidates(db, three, ["first text", "second text", "third text"]),
    }


def _current(db: Session, record: Record, user_id: int) -> PreferenceJudgment:
    db.expire_all()
    (j,) = db.scalars(
        select(PreferenceJudgment).where(
            PreferenceJudgment.record_id == record.id,
            PreferenceJudgment.user_id == user_id,
            PreferenceJudgment.superseded_by_id.is_(None),
        )
    ).all()
    return j


def _shown(page: Any) -> dict[int, str]:
    """Candidate number on the page -> its text, as rendered."""
    out = {}
    for el in page.locator("[data-candidate]").all():
        out[int(el.get_attribute("data-candidate"))] = el.locator(".text").inner_text()
    return out


def test_keys_choose_tie_both_bad_and_rank_and_each_is_saved_as_the_persons_judgment(
    client: Any, db: Session, world: dict[str, Any], browser_page: Any
) -> None:
    page = browser_page
    login(client, world["annotator"])
    serve_from(client, page)
    page.goto(f"{BASE}/ui/datasets/{world['ds'].id}/review")
    page.wait_for_selector("[data-role=candidates].pair")
    shown = _shown(page)
    # Candidate text is the LLM's: shown as text, never run.
    assert sorted(shown.values()) == sorted(c.content for c in world["pair"])
    assert page.evaluate("window.__xss") is None
    by_text = {c.content: c.id for c in world["pair"]}
    two, annotator = world["two"], world["annotator"]

    page.keyboard.press("=")
    page.wait_for_selector("[data-role=saved]:has-text('Saved: tie on')")
    assert _current(db, two, annotator.id).choice == "tie"
    page.keyboard.press("b")
    page.wait_for_selector("[data-role=saved]:has-text('Saved: both bad on')")
    assert _current(db, two, annotator.id).choice == "both_bad"
    page.keyboard.press("2")
    page.wait_for_selector("[data-role=saved]:has-text('Saved: preferred #2 on')")
    judgment = _current(db, two, annotator.id)
    winner = {"a": judgment.candidate_ids[0], "b": judgment.candidate_ids[1]}[judgment.choice or ""]
    assert winner == by_text[shown[2]]
    assert page.inner_text("[data-role=my-preference]") == "Your judgment: prefers #2 over #1"
    db.expire_all()
    assert db.get(Record, two.id).rating is None  # type: ignore[union-attr]  # 2 chose, it did not rate

    page.keyboard.press("j")
    page.wait_for_selector("[data-role=candidates].ranked")
    shown = _shown(page)
    by_text = {c.content: c.id for c in world["trio"]}
    page.keyboard.press("3")
    page.keyboard.press("2")
    page.keyboard.press("Backspace")
    page.keyboard.press("1")
    assert "#3 > #1" in page.inner_text("[data-role=candidate-hint]")
    page.keyboard.press("Enter")
    page.wait_for_selector(f"[data-role=saved]:has-text('Saved: ranked #{world['three'].id}')")
    ranking = _current(db, world["three"], annotator.id).ranking
    assert ranking == [[by_text[shown[3]]], [by_text[shown[1]]], [by_text[shown[2]]]]

    page.keyboard.press("h")
    page.wait_for_selector("[data-role=history]:has-text('prefer (ranking)')")
    assert "ranks #3 > #1 > #2" in page.inner_text("[data-role=history]")


def test_timeline_lists_judgments_superseded_ones_marked_and_the_judges_beside(
    client: Any, db: Session, world: dict[str, Any]
) -> None:
    two, (a, b) = world["two"], world["pair"]
    preferences.record_pairwise(db=db, user=world["annotator"], record=two, a_id=a.id, b_id=b.id, choice="a")
    preferences.record_pairwise(db=db, user=world["annotator"], record=two, a_id=a.id, b_id=b.id, choice="b")
    preferences.record_machine_judgment(
        db=db, record=two, kind="pairwise", candidate_ids=[a.id, b.id], job_id=None,
        judge_model="judge-llm", gen_key="j:1", choice="a", rationale="A is shorter.",
    )  # fmt: skip
    h = token_for(db, world["annotator"])
    entries = client.get(f"/api/v1/review/records/{two.id}/timeline", headers=h).json()
    prefs = [e for e in entries if e["action"].startswith(("prefer", "judge"))]
    assert [(e["action"], e["by"], e["undone"]) for e in prefs] == [
        ("judge (pairwise)", "judge judge-llm", False),
        ("prefer (pairwise)", world["annotator"].username, False),
        ("prefer (pairwise)", world["annotator"].username, True),
    ]
    assert prefs[0]["note"] == "A is shorter."
    login(client, world["annotator"])
    page = client.get(f"/ui/records/{two.id}/history")
    assert page.status_code == 200 and "prefer (pairwise)" in page.text and "A is shorter." in page.text
    # The review item shows the judge's verdict as advice, and the annotator's own choice.
    item = client.get(f"/api/v1/review/datasets/{world['ds'].id}/queue", headers=h).json()["items"][0]
    assert item["id"] == two.id and len(item["candidates"]) == 2
    assert item["my_preference"]["choice"] == "b"
    assert item["preference_advice"][0].startswith("judge judge-llm: prefers #")


def test_agreement_on_pairs_between_annotators_and_with_the_judge(
    client: Any, db: Session, world: dict[str, Any]
) -> None:
    (a, b), (x, y, z) = world["pair"], world["trio"]
    two, three = world["two"], world["three"]
    for user, choice in ((world["annotator"], "a"), (world["other"], "a")):
        preferences.record_pairwise(db=db, user=user, record=two, a_id=a.id, b_id=b.id, choice=choice)
    preferences.record_ranking(db=db, user=world["annotator"], record=three, ranking=[x.id, y.id, z.id])
    preferences.record_ranking(db=db, user=world["other"], record=three, ranking=[y.id, x.id, z.id])
    preferences.record_machine_judgment(
        db=db, record=two, kind="pairwise", candidate_ids=[b.id, a.id], job_id=None,
        judge_model="judge-llm", gen_key="j:1", choice="b",
    )  # fmt: skip
    resp = client.get(
        f"/api/v1/review/datasets/{world['ds'].id}/agreement", headers=token_for(db, world["curator"])
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    (people,) = body["preference_pairs"]
    # Four candidate pairs both compared: (a, b) agreed; of the trio's three pairs, two agreed.
    assert (people["pairs"], people["agree"]) == (4, 0.75)
    # The judge saw (b, a) and picked b = a: agreement does not depend on the order shown.
    assert {(r["annotator"], r["pairs"], r["agree"]) for r in body["preference_judge"]} == {
        (world["annotator"].username, 1, 1.0),
        (world["other"].username, 1, 1.0),
    }
    login(client, world["curator"])
    page = client.get(f"/ui/datasets/{world['ds'].id}")
    assert page.status_code == 200
    table = page.text.split('data-role="preference-agreement"', 1)[1].split("</table>", 1)[0]
    assert f"{world['annotator'].username} · judge" in table and "75.0%" in table


def test_compare_queue_holds_records_with_candidates_you_have_not_judged_whatever_their_status(
    client: Any, db: Session, world: dict[str, Any]
) -> None:
    ds = world["ds"]
    accepted, rejected, single = make_records(db, ds, 3)
    accepted.status, rejected.status = "accepted", "rejected"
    _candidates(db, accepted, ["yes", "no"])
    _candidates(db, rejected, ["yes", "no"])
    _candidates(db, single, ["only one"])
    h = token_for(db, world["annotator"])

    def compare_queue() -> list[int]:
        resp = client.get(f"/api/v1/review/datasets/{ds.id}/queue", params={"compare": "true"}, headers=h)
        assert resp.status_code == 200, resp.text
        return [item["id"] for item in resp.json()["items"]]

    assert compare_queue() == [world["two"].id, world["three"].id, accepted.id]
    a, b = world["pair"]
    preferences.record_pairwise(
        db=db, user=world["annotator"], record=world["two"], a_id=a.id, b_id=b.id, choice="a"
    )
    assert compare_queue() == [world["three"].id, accepted.id]
    # Another annotator's queue still has it: agreement needs both.
    other = client.get(
        f"/api/v1/review/datasets/{ds.id}/queue",
        params={"compare": "true"},
        headers=token_for(db, world["other"]),
    )
    assert world["two"].id in [i["id"] for i in other.json()["items"]]
    login(client, world["annotator"])
    page = client.get(f"/ui/datasets/{ds.id}/review", params={"compare": "true"})
    assert page.status_code == 200 and "Compare candidates" in page.text
    assert f'"id": {world["three"].id}' in page.text or f'"id":{world["three"].id}' in page.text
