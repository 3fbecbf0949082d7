"""A record's history over the API: decisions and ratings beside the edits, and an edit made after a rating
still keeps the original text (its diff, its DPO pair)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.orm import Session

from tests.factories import make_dataset, make_project, make_records, make_user, token_for


@pytest.fixture
def world(db: Session) -> dict[str, Any]:
    curator, ann, other = make_user(db, "curator"), make_user(db, "annotator"), make_user(db, "annotator")
    ds = make_dataset(db, make_project(db, (curator, "curator"), (ann, "annotator"), (other, "annotator")))
    recs = make_records(db, ds, 3)
    return {
        "curator": curator,
        "ann": ann,
        "other": other,
        "ds": ds,
        "recs": recs,
        "h": token_for(db, ann),
        "hc": token_for(db, curator),
        "ho": token_for(db, other),
    }


def act(client: Any, h: dict[str, str], rid: int, action: str, version: int, **extra: Any) -> Any:
    resp = client.post(
        f"/api/v1/review/records/{rid}/decision",
        json={"action": action, "version": version, **extra},
        headers=h,
    )
    assert resp.status_code == 200, resp.text
    return resp.json()["record"]


def test_an_edit_after_a_rating_keeps_the_original_text_its_diff_and_its_preference_pair(
    client: Any, world: dict[str, Any]
) -> None:
    rid, h = world["recs"][0].id, world["h"]
    state = act(client, h, rid, "rate", 1, rating=2)
    assert state["version"] == 2
    resp = client.post(
        f"/api/v1/review/records/{rid}/edit", json={"version": 2, "output": "Output 0, corrected"}, headers=h
    )
    assert resp.status_code == 200
    edits = [e for e in resp.json()["timeline"] if e["kind"] == "edit"]
    assert len(edits) == 1 and edits[0]["version"] == 3
    assert {"op": "insert", "text": ", corrected"} in edits[0]["changes"]["output"]
    assert resp.json()["history"][0]["version"] == 3
    pairs = client.get(
        f"/api/v1/review/datasets/{world['ds'].id}/preference-pairs.jsonl", headers=world["hc"]
    ).text
    assert '"rejected": "Output 0"' in pairs and "Output 0, corrected" in pairs


def test_timeline_lists_decisions_ratings_tags_flags_and_undo_newest_first_with_who(
    client: Any, world: dict[str, Any]
) -> None:
    rid, h, who = world["recs"][1].id, world["h"], world["ann"].username
    v = act(client, h, rid, "rate", 1, rating=5)["version"]
    v = act(client, h, rid, "tag", v, tags=["style"])["version"]
    v = act(client, h, rid, "skip", v)["version"]  # a skip changes nothing and is left out
    v = act(client, h, rid, "reject", v, reason="unsafe")["version"]
    undo = client.post(f"/api/v1/review/datasets/{world['ds'].id}/undo", headers=h)
    assert undo.status_code == 200
    act(client, world["ho"], rid, "flag", undo.json()["item"]["version"], note="check the facts")

    timeline = client.get(f"/api/v1/review/records/{rid}/timeline", headers=h).json()
    assert [(e["action"], e["by"]) for e in timeline] == [
        ("flag", world["other"].username),
        ("undo", who),
        ("reject", who),
        ("tag", who),
        ("rate", who),
    ]
    summaries = [e["summary"] for e in timeline]
    assert summaries == [
        "flagged for a curator",
        "undid reject",
        "status pending → rejected; reason: unsafe",
        "tags — → style",
        "rating — → 5",
    ]
    assert [e["undone"] for e in timeline] == [False, False, True, False, False]
    assert all(e["kind"] == "decision" and e["at"] for e in timeline)


def test_an_assigned_annotators_vote_shows_as_their_vote(client: Any, world: dict[str, Any]) -> None:
    rid = world["recs"][2].id
    assign = client.post(
        f"/api/v1/review/datasets/{world['ds'].id}/assignments",
        json={"user_ids": [world["ann"].id, world["other"].id], "k": 2},
        headers=world["hc"],
    )
    assert assign.status_code == 201
    act(client, world["h"], rid, "accept", 1)
    act(client, world["ho"], rid, "accept", 1)
    timeline = client.get(f"/api/v1/review/records/{rid}/timeline", headers=world["h"]).json()
    assert [e["summary"] for e in timeline] == [
        "voted accepted; status pending → accepted; reason: consensus",
        "voted accepted",
    ]


def test_timeline_of_a_record_in_another_project_is_404(
    client: Any, db: Session, world: dict[str, Any]
) -> None:
    outsider = make_user(db, "annotator")
    make_project(db, (outsider, "annotator"))
    url = f"/api/v1/review/records/{world['recs'][0].id}/timeline"
    assert client.get(url, headers=world["h"]).status_code == 200
    assert client.get(url, headers=token_for(db, outsider)).status_code == 404


def test_a_bulk_status_change_shows_as_the_latest_bulk_decision_with_who(
    client: Any, db: Session, world: dict[str, Any]
) -> None:
    rid = world["recs"][0].id
    act(client, world["h"], rid, "rate", 1, rating=3)
    bulk = client.post(
        f"/api/v1/datasets/{world['ds'].id}/records/bulk-status",
        json={"filter": {"ids": [rid]}, "status": "rejected", "reason": "off-topic"},
        headers=world["hc"],
    )
    assert bulk.status_code == 200 and bulk.json()["updated"] == 1
    db.expire_all()  # the bulk UPDATE bypasses the ORM; each real request has a session of its own
    timeline = client.get(f"/api/v1/review/records/{rid}/timeline", headers=world["h"]).json()
    assert [(e["action"], e["by"], e["summary"]) for e in timeline] == [
        ("bulk", world["curator"].username, "status set to rejected (reason: off-topic) by a bulk action"),
        ("rate", world["ann"].username, "rating — → 3"),
    ]
