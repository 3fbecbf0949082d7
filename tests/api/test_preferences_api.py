"""Candidates and people's judgments through the API: what the pairwise / ranking review builds on."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.audit.models import AuditLog
from app.datasets.models import Dataset
from app.jobs.models import Job
from app.projects.models import ProjectMember
from tests.factories import make_dataset, make_project, make_records, make_user, token_for


@pytest.fixture
def setup(db, backend):
    annotator = make_user(db, "annotator")
    dataset = make_dataset(db, make_project(db, (annotator, "annotator")))
    first, second = make_records(db, dataset, 2)
    return first, second, token_for(db, annotator)


def test_a_person_adds_candidates_chooses_between_two_and_a_new_choice_supersedes_the_old_with_history(
    client, db, setup
):
    record, _, h = setup
    url = f"/api/v1/records/{record.id}"
    mine = client.post(f"{url}/candidates", json={"content": "My own answer.", "note": "terse"}, headers=h)
    assert mine.status_code == 201, mine.text
    assert mine.json()["source"] == "person" and mine.json()["meta"] == {"note": "terse"}
    original = client.post(f"{url}/candidates/original", headers=h)
    assert original.status_code == 201 and original.json()["content"] == record.output
    assert client.post(f"{url}/candidates/original", headers=h).json()["id"] == original.json()["id"]
    a, b = mine.json()["id"], original.json()["id"]

    first = client.post(f"{url}/judgments/pairwise", json={"a_id": a, "b_id": b, "choice": "a"}, headers=h)
    assert first.status_code == 201, first.text
    # The same pair shown the other way round, decided again: the new choice replaces the old one.
    second = client.post(
        f"{url}/judgments/pairwise",
        json={"a_id": b, "b_id": a, "choice": "tie", "rationale": "same"},
        headers=h,
    )
    assert second.status_code == 201, second.text
    ranking = client.post(f"{url}/judgments/ranking", json={"ranking": [[a, b]]}, headers=h)
    assert ranking.status_code == 422 and "ranking" in ranking.text  # all tied: that ranks nothing
    ranked = client.post(f"{url}/judgments/ranking", json={"ranking": [b, a]}, headers=h)
    assert ranked.status_code == 201 and ranked.json()["ranking"] == [[b], [a]]

    now = client.get(f"{url}/candidates", headers=h).json()
    assert [c["id"] for c in now["candidates"]] == [a, b]
    assert [(j["kind"], j["choice"]) for j in now["judgments"]] == [("pairwise", "tie"), ("ranking", None)]
    history = client.get(f"{url}/candidates", params={"history": "true"}, headers=h).json()["judgments"]
    old = next(j for j in history if j["id"] == first.json()["id"])
    assert old["superseded_by_id"] == second.json()["id"] and old["choice"] == "a"
    # Every decision is in the audit log with who made it and what it replaced.
    logged = db.scalars(
        select(AuditLog)
        .where(AuditLog.entity_type == "record", AuditLog.entity_id == str(record.id))
        .order_by(AuditLog.id)
    ).all()
    assert [e.action for e in logged] == ["judgment.pairwise", "judgment.pairwise", "judgment.ranking"]
    assert logged[1].detail["supersedes"] == first.json()["id"] and logged[1].detail["choice"] == "tie"
    assert db.scalar(select(AuditLog).where(AuditLog.action == "candidate.add")).entity_id == str(a)


def test_malformed_judgments_are_refused_naming_the_field_and_store_nothing(client, setup):
    record, other, h = setup
    url = f"/api/v1/records/{record.id}"
    a = client.post(f"{url}/candidates", json={"content": "One."}, headers=h).json()["id"]
    b = client.post(f"{url}/candidates", json={"content": "Two."}, headers=h).json()["id"]
    elsewhere = client.post(
        f"/api/v1/records/{other.id}/candidates", json={"content": "x"}, headers=h
    ).json()["id"]
    cases = [
        ("pairwise", {"a_id": a, "b_id": b, "choice": "left"}, "choice"),
        ("pairwise", {"a_id": a, "b_id": a, "choice": "a"}, "candidate_ids"),
        ("pairwise", {"a_id": a, "b_id": elsewhere, "choice": "a"}, "candidate_ids"),
        ("pairwise", {"a_id": a, "choice": "a"}, "b_id"),
        ("ranking", {"ranking": [a]}, "ranking"),
        ("ranking", {"ranking": [a, []]}, "ranking.1"),
        ("ranking", {"ranking": [a, b, a]}, "ranking"),
        ("ranking", {"ranking": [a, 2**70]}, "ranking"),
    ]
    for kind, body, field in cases:
        r = client.post(f"{url}/judgments/{kind}", json=body, headers=h)
        assert r.status_code == 422 and field in r.text, (body, r.status_code, r.text)
    assert client.post(f"{url}/candidates", json={"content": ""}, headers=h).status_code == 422
    assert client.get(f"{url}/candidates", headers=h).json()["judgments"] == []
    assert client.get("/api/v1/records/999999999/candidates", headers=h).status_code == 404


@pytest.mark.parametrize("backend", ["sqlite"])  # validation only: one database is enough
def test_respond_and_rank_jobs_with_bad_params_are_refused_naming_the_field_and_queue_nothing(
    client, db, teacher, setup
):
    record, _, _ = setup
    curator = make_user(db, "curator")
    dataset_id = record.dataset_id
    project_id = db.get(Dataset, dataset_id).project_id
    db.add(ProjectMember(project_id=project_id, user_id=curator.id, role="curator"))
    db.flush()
    h = token_for(db, curator)
    cases = [
        ("respond", {"teacher": "fake", "samplers": [{"teacher": "nobody"}]}, "params.samplers.0.teacher"),
        ("respond", {"teacher": "fake", "n": 17}, "n"),
        ("respond", {"teacher": "fake", "samplers": [{"teacher": "fake", "seed": -1}]}, "seed"),
        ("rank_candidates", {"teacher": "fake", "aspects": False, "pairwise": False}, "nothing to do"),
        ("rank_candidates", {"teacher": "fake", "max_pairs_per_record": 0}, "max_pairs_per_record"),
        ("respond_local", {"systems": [{"run_id": 1, "base_model": "tiny-llama"}]}, "exactly one of run_id"),
        ("respond_local", {"systems": []}, "systems"),
    ]
    for kind, params, field in cases:
        r = client.post(
            "/api/v1/jobs", json={"kind": kind, "dataset_id": dataset_id, "params": params}, headers=h
        )
        assert r.status_code == 422 and field in r.text, (kind, params, r.status_code, r.text)
    assert db.query(Job).filter(Job.dataset_id == dataset_id).count() == 0
