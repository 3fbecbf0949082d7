"""The review API: one request per action, undo, conflicts, soft locks, k-annotator assignments, agreement,
speed, stats, near-duplicate groups and DPO pairs from edits."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from app.base import utcnow
from app.pipeline.rouge import rouge_l
from app.records.models import Record, RecordAssignment, ReviewEvent
from app.review import insights
from tests.factories import make_dataset, make_project, make_records, make_user, token_for


@pytest.fixture
def world(db):
    curator = make_user(db, "curator")
    ann = [make_user(db, "annotator") for _ in range(3)]
    project = make_project(db, (curator, "curator"), *[(a, "annotator") for a in ann])
    ds = make_dataset(db, project)
    recs = make_records(db, ds, 12)
    return {"curator": curator, "ann": ann, "ds": ds, "recs": recs, "h": [token_for(db, a) for a in ann]}


def decide(client, h, rid, action, version, **extra):
    return client.post(
        f"/api/v1/review/records/{rid}/decision",
        json={"action": action, "version": version, **extra},
        headers=h,
    )


def test_a_decision_is_one_request_that_also_brings_the_next_records(client, db, world):
    h, ds = world["h"][0], world["ds"].id
    first = client.get(f"/api/v1/review/datasets/{ds}/queue?limit=3", headers=h).json()["items"]
    assert [i["id"] for i in first] == [r.id for r in world["recs"][:3]]
    resp = decide(
        client, h, first[0]["id"], "accept", first[0]["version"], prefetch_after=first[-1]["id"], prefetch=2
    )
    assert resp.status_code == 200
    body = resp.json()
    assert body["record"]["status"] == "accepted" and body["record"]["version"] == 2
    assert [i["id"] for i in body["next"]] == [r.id for r in world["recs"][3:5]]
    event = db.query(ReviewEvent).filter(ReviewEvent.record_id == first[0]["id"]).one()
    assert event.action == "accept" and event.at is not None and event.user_id == world["ann"][0].id


def test_reject_keeps_the_reason_and_rating_does_not_change_status(client, db, world):
    h, r = world["h"][0], world["recs"][0]
    decide(client, h, r.id, "rate", 1, rating=4)
    resp = decide(client, h, r.id, "reject", 2, reason="incorrect")
    db.refresh(r)
    assert resp.status_code == 200 and (r.status, r.reason, r.rating, r.version) == (
        "rejected",
        "incorrect",
        4,
        3,
    )


def test_a_stale_version_gets_409_and_changes_nothing(client, db, world):
    r = world["recs"][0]
    decide(client, world["h"][0], r.id, "accept", 1)
    resp = decide(client, world["h"][1], r.id, "reject", 1, reason="bad")
    assert resp.status_code == 409 and "changed by someone else" in resp.json()["detail"]
    db.refresh(r)
    assert r.status == "accepted"


def test_undo_walks_back_the_last_decisions_one_by_one(client, db, world):
    h, ds, (r1, r2) = world["h"][0], world["ds"].id, world["recs"][:2]
    decide(client, h, r1.id, "accept", 1)
    decide(client, h, r2.id, "reject", 1, reason="off-topic")
    decide(client, h, world["recs"][2].id, "skip", 1)
    assert client.post(f"/api/v1/review/datasets/{ds}/undo", headers=h).json()["undone_action"] == "skip"
    undone = client.post(f"/api/v1/review/datasets/{ds}/undo", headers=h).json()
    assert undone["undone_action"] == "reject" and undone["item"]["id"] == r2.id
    client.post(f"/api/v1/review/datasets/{ds}/undo", headers=h)
    db.refresh(r1), db.refresh(r2)
    assert (r1.status, r1.reason, r2.status, r2.reason) == ("pending", None, "pending", None)
    assert client.post(f"/api/v1/review/datasets/{ds}/undo", headers=h).status_code == 404


def test_undo_is_refused_when_someone_else_changed_the_record_since(client, db, world):
    h, ds, r = world["h"][0], world["ds"].id, world["recs"][0]
    decide(client, h, r.id, "accept", 1)
    curator = token_for(db, world["curator"])
    client.patch(f"/api/v1/records/{r.id}", json={"version": 2, "status": "rejected"}, headers=curator)
    resp = client.post(f"/api/v1/review/datasets/{ds}/undo", headers=h)
    assert resp.status_code == 409
    db.refresh(r)
    assert r.status == "rejected"


def test_records_handed_to_one_annotator_are_not_handed_to_another(client, world):
    ds = world["ds"].id
    a = [
        i["id"]
        for i in client.get(f"/api/v1/review/datasets/{ds}/queue?limit=3", headers=world["h"][0]).json()[
            "items"
        ]
    ]
    b = [
        i["id"]
        for i in client.get(f"/api/v1/review/datasets/{ds}/queue?limit=3", headers=world["h"][1]).json()[
            "items"
        ]
    ]
    assert not set(a) & set(b) and len(b) == 3
    again = client.get(f"/api/v1/review/datasets/{ds}/queue?limit=3", headers=world["h"][0]).json()["items"]
    assert [i["id"] for i in again] == a


def test_k_annotators_vote_and_agreement_is_measured(client, db, world):
    ds, curator = world["ds"].id, token_for(db, world["curator"])
    ann = world["ann"][:2]
    resp = client.post(
        f"/api/v1/review/datasets/{ds}/assignments",
        json={"user_ids": [a.id for a in ann], "k": 2, "filter": {"ids": [r.id for r in world["recs"][:4]]}},
        headers=curator,
    )
    assert resp.json() == {"records": 4, "assignments": 8}
    queue = client.get(f"/api/v1/review/datasets/{ds}/queue?limit=10", headers=world["h"][0]).json()
    assert [i["id"] for i in queue["items"]] == [r.id for r in world["recs"][:4]] and queue[
        "remaining_hint"
    ] == 4
    plan = [("accept", "accept"), ("accept", "reject"), ("reject", "reject"), ("accept", "accept")]
    for r, (va, vb) in zip(world["recs"][:4], plan, strict=True):
        decide(client, world["h"][0], r.id, va, r.version, reason="x" if va == "reject" else None)
        decide(client, world["h"][1], r.id, vb, r.version, reason="x" if vb == "reject" else None)
    for r in world["recs"][:4]:
        db.refresh(r)
    assert [r.status for r in world["recs"][:4]] == ["accepted", "pending", "rejected", "accepted"]
    assert world["recs"][1].flagged and set(world["recs"][1].meta["disagreement"].values()) == {
        "accepted",
        "rejected",
    }
    pairs = client.get(f"/api/v1/review/datasets/{ds}/agreement", headers=curator).json()["pairs"]
    expected = insights.kappa([(True, True), (True, False), (False, False), (True, True)])
    assert pairs == [
        {"a": ann[0].username, "b": ann[1].username, "records": 4, "agree": 0.75, "kappa": expected}
    ]
    assert client.get(f"/api/v1/review/datasets/{ds}/queue", headers=world["h"][0]).json()["items"] == []


def test_agreement_with_the_llm_judge(client, db, world):
    ds, h = world["ds"].id, world["h"][0]
    for r, score in zip(world["recs"][:3], (5.0, 2.0, 4.5), strict=True):
        r.judge_score = score
    db.flush()
    decide(client, h, world["recs"][0].id, "accept", 1)
    decide(client, h, world["recs"][1].id, "reject", 1)
    decide(client, h, world["recs"][2].id, "reject", 1)
    judge = client.get(
        f"/api/v1/review/datasets/{ds}/agreement?judge_threshold=4", headers=token_for(db, world["curator"])
    ).json()["judge"]
    assert judge[0]["records"] == 3 and judge[0]["agree"] == round(2 / 3, 4)


def test_cohens_kappa_matches_the_textbook_example():
    # 50 items: both yes 20, A yes/B no 5, A no/B yes 10, both no 15 -> po 0.7, pe 0.5, kappa 0.4
    pairs = [(True, True)] * 20 + [(True, False)] * 5 + [(False, True)] * 10 + [(False, False)] * 15
    assert insights.kappa(pairs) == pytest.approx(0.4)


def test_records_per_minute_ignores_breaks(db, world):
    ds, user = world["ds"], world["ann"][0]
    t0 = utcnow()
    # 10 decisions 6 s apart, a 1-hour break, 5 more 6 s apart: ~15 decisions in ~1.5 active minutes.
    times = [t0 + timedelta(seconds=6 * i) for i in range(10)]
    times += [times[-1] + timedelta(hours=1, seconds=6 * i) for i in range(5)]
    for r, at in zip(world["recs"] * 2, times, strict=False):
        db.add(ReviewEvent(dataset_id=ds.id, record_id=r.id, user_id=user.id, action="accept", at=at))
    db.flush()
    stats = {
        s.username: s for s in insights.annotator_progress(db=db, user=world["curator"], dataset_id=ds.id)
    }
    s = stats[user.username]
    assert s.decisions == 15 and s.accepted == 15
    assert s.active_minutes == pytest.approx((13 * 6 + 2 * 6) / 60, rel=0.01)
    assert s.per_minute == pytest.approx(10.0, rel=0.01)


def test_edit_is_a_revision_with_a_diff_and_undo_restores_the_text(client, db, world):
    h, ds, r = world["h"][0], world["ds"].id, world["recs"][0]
    resp = client.post(
        f"/api/v1/review/records/{r.id}/edit", json={"version": 1, "output": "Output 0, corrected"}, headers=h
    )
    assert resp.status_code == 200
    hist = resp.json()["history"]
    assert hist[0]["version"] == 2 and hist[0]["edited_by"] == world["ann"][0].username
    parts = hist[0]["changes"]["output"]
    assert {"op": "insert", "text": ", corrected"} in parts and parts[0] == {
        "op": "equal",
        "text": "Output 0",
    }
    stale = client.post(
        f"/api/v1/review/records/{r.id}/edit", json={"version": 1, "output": "lost?"}, headers=h
    )
    assert stale.status_code == 409
    client.post(f"/api/v1/review/datasets/{ds}/undo", headers=h)
    db.refresh(r)
    assert r.output == "Output 0" and r.version == 3


def test_conversation_turns_are_edited_in_place(client, db, world):
    r = world["recs"][0]
    r.instruction, r.messages = (
        "",
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Helo"}],
    )
    db.flush()
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    resp = client.post(
        f"/api/v1/review/records/{r.id}/edit", json={"version": 1, "messages": turns}, headers=world["h"][0]
    )
    assert resp.status_code == 200
    assert list(resp.json()["history"][0]["changes"]) == ["turn 2 (assistant)"]


def test_preference_pairs_come_from_human_edits_of_the_response(client, db, world):
    h, ds = world["h"][0], world["ds"].id
    edited, prompt_only, dropped = world["recs"][:3]
    client.post(
        f"/api/v1/review/records/{edited.id}/edit", json={"version": 1, "output": "Better output"}, headers=h
    )
    client.post(
        f"/api/v1/review/records/{prompt_only.id}/edit",
        json={"version": 1, "instruction": "Reworded"},
        headers=h,
    )
    client.post(f"/api/v1/review/records/{dropped.id}/edit", json={"version": 1, "output": "x"}, headers=h)
    decide(client, h, dropped.id, "reject", 2, reason="bad")
    resp = client.get(
        f"/api/v1/review/datasets/{ds}/preference-pairs.jsonl", headers=token_for(db, world["curator"])
    )
    lines = [json.loads(x) for x in resp.text.splitlines()]
    assert lines == [
        {
            "prompt": "Instruction number 0",
            "chosen": "Better output",
            "rejected": "Output 0",
            "record_id": edited.id,
            "versions": [1, 2],
        }
    ]


def test_neighbours_are_scored_with_rouge_l(client, db, world):
    from sqlalchemy import text

    from app.review import service

    # The index the review page needs to show "records that found this one" (rolled back with the test).
    db.execute(text("CREATE INDEX ix_test_records_nn ON records (dataset_id, nn_record_id)"))
    service._INDEXED.clear()
    a, b, c = world["recs"][:3]
    a.instruction, b.instruction = "Write a poem about the sea", "Write a short poem about the sea"
    b.nn_record_id, b.nn_score = a.id, 0.9
    c.parent_id = a.id
    db.flush()
    items = client.get(
        f"/api/v1/review/datasets/{world['ds'].id}/queue?limit=3", headers=world["h"][0]
    ).json()["items"]
    by_id = {i["id"]: i for i in items}
    score = round(rouge_l("Write a short poem about the sea", "Write a poem about the sea"), 4)
    assert {"id": b.id, "relation": "points_here", "score": score}.items() <= by_id[a.id]["neighbours"][
        0
    ].items()
    assert (
        by_id[b.id]["neighbours"][0]["id"] == a.id and by_id[b.id]["neighbours"][0]["relation"] == "nearest"
    )
    assert (
        by_id[c.id]["provenance"]["parent_id"] == a.id
        and by_id[c.id]["neighbours"][0]["relation"] == "parent"
    )


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"], indirect=True)
def test_dataset_stats_count_by_status_source_label_and_bucket(db, backend):
    curator = make_user(db, "curator")
    ds = make_dataset(db, make_project(db, (curator, "curator")))
    make_records(db, ds, 3, instruction="Write a haiku", source="seed", label="poem", nn_score=0.95)
    make_records(
        db, ds, 2, instruction="explain gravity.", output="x" * 250, status="rejected", nn_score=0.31
    )
    stats = insights.dataset_stats(db=db, user=curator, dataset_id=ds.id)
    assert stats["total"] == 5 and stats["by_status"] == {"pending": 3, "rejected": 2}
    assert stats["by_source"] == {"seed": 3, "human": 2} and stats["by_label"] == {"poem": 3}
    assert stats["nn_rouge"]["0.9"] == 3 and stats["nn_rouge"]["0.3"] == 2
    assert stats["output_chars"]["200"] == 2 and stats["prompt_chars"]["0"] == 5
    assert stats["leading_words"] == {"write": 3, "explain": 2}


def test_a_near_duplicate_group_is_decided_at_once(client, db, world):
    ds, curator = world["ds"].id, token_for(db, world["curator"])
    anchor, *dups = world["recs"][:4]
    for d in dups:
        d.nn_record_id, d.nn_score = anchor.id, 0.92
    db.flush()
    groups = client.get(f"/api/v1/review/datasets/{ds}/duplicate-groups", headers=curator).json()
    assert groups[0]["anchor_id"] == anchor.id and groups[0]["members"] == 3
    resp = client.post(
        f"/api/v1/review/datasets/{ds}/duplicate-groups/{anchor.id}",
        json={"status": "rejected"},
        headers=curator,
    )
    assert resp.json() == {"updated": 3}
    for r in world["recs"][:4]:
        db.refresh(r)
    assert [r.status for r in world["recs"][:4]] == ["pending", "rejected", "rejected", "rejected"]


def test_annotators_cannot_use_curator_endpoints_and_cookies_need_csrf(client, db, world):
    h, ds = world["h"][0], world["ds"].id
    assert client.get(f"/api/v1/review/datasets/{ds}/stats", headers=h).status_code == 403
    assert client.get(f"/api/v1/review/datasets/{ds}/preference-pairs.jsonl", headers=h).status_code == 403
    assert (
        client.post(
            f"/api/v1/review/datasets/{ds}/assignments", json={"user_ids": [world["ann"][0].id]}, headers=h
        ).status_code
        == 403
    )
    outsider = token_for(db, make_user(db, "curator"))
    assert client.get(f"/api/v1/review/datasets/{ds}/queue", headers=outsider).status_code == 404
    from tests.factories import PASSWORD

    client.post("/api/v1/auth/login", json={"username": world["ann"][0].username, "password": PASSWORD})
    assert decide(client, {}, world["recs"][0].id, "accept", 1).status_code == 403
    assert db.get(Record, world["recs"][0].id).status == "pending"
    assert db.query(RecordAssignment).count() == 0
