"""A person's decision outranks a machine's (DESIGN rule 7), for every machine job that sets statuses.

Each job runs in the real job runner on committed data, on PostgreSQL and on SQLite. People decide through
the same services the API and the review page use.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from app.auth.models import User
from app.records import service as records
from app.records.models import Record
from app.records.schemas import RecordFilter, RecordUpdate
from app.review import service as review
from tests.factories import make_dataset, make_project, make_user, run_job_now


def _dataset(engine: Engine, rows: list[tuple[str, str]]) -> tuple[int, User, list[int]]:
    with Session(engine) as db:
        curator = make_user(db, "curator")
        dataset = make_dataset(db, make_project(db, (curator, "curator")))
        recs = [
            Record(dataset_id=dataset.id, instruction=i, output=o, source="import:alpaca") for i, o in rows
        ]
        db.add_all(recs)
        db.commit()
        db.expunge(curator)
        return dataset.id, curator, [r.id for r in recs]


def _decide(engine: Engine, user: User, record_id: int, **change: Any) -> None:
    with Session(engine) as db:
        version = db.get(Record, record_id).version  # type: ignore[union-attr]
        records.update_record(
            db=db, user=db.merge(user), record_id=record_id, change=RecordUpdate(version=version, **change)
        )
        db.commit()


def _accept_in_review(engine: Engine, user: User, record_id: int) -> None:
    with Session(engine) as db:
        version = db.get(Record, record_id).version  # type: ignore[union-attr]
        review.decide(db=db, user=db.merge(user), record_id=record_id, action="accept", version=version)
        db.commit()


def _state(engine: Engine, ids: list[int]) -> dict[int, tuple[str, str | None, str | None]]:
    with Session(engine) as db:
        rows = db.execute(
            select(Record.id, Record.status, Record.reason, Record.advice).where(Record.id.in_(ids))
        )
        return {rid: (status, reason, advice) for rid, status, reason, advice in rows}


def _disagreements(engine: Engine, user: User, dataset_id: int) -> set[int]:
    with Session(engine) as db:
        page, _ = records.list_records(
            db=db, user=db.merge(user), dataset_id=dataset_id, flt=RecordFilter(disagreement=True), limit=500
        )
        return {r.id for r in page}


POEMS = [
    ("Write a short poem about the sea at night.", "Waves whisper."),  # 0: machine, near-dup of 1
    ("Write a short poem about the sea at dawn.", "Light on water."),  # 1: a person accepts it
    ("Describe a mountain lake at night.", ""),  # 2: rules: empty output; a person rates it
    ("Name three primary colours.", "Red, blue, yellow."),  # 3: a person edits it
    ("Name three primary colours.", "Red, blue, yellow."),  # 4: exact duplicate of 3, machine
    ("Describe a desert at noon.", ""),  # 5: rules: empty output, machine
]


def test_dedup_keeps_what_people_decided_and_stores_its_verdict_as_advice(committed: Engine):
    dataset_id, curator, ids = _dataset(committed, POEMS)
    _accept_in_review(committed, curator, ids[1])
    _decide(committed, curator, ids[3], output="Red, blue and yellow.")
    _decide(committed, curator, ids[4], status="accepted")
    job = run_job_now(committed, curator, dataset_id, "dedup", {"field": "instruction", "threshold": 0.7})
    state = _state(committed, ids)
    # People's records are looked at first: the machine's near-duplicate of an accepted record is filtered,
    # the accepted one kept.
    assert state[ids[0]][:2] == ("filtered", "rouge_dup")
    assert state[ids[1]] == ("accepted", "human", None)
    # Two human-decided exact duplicates: both keep their status; the second carries the machine's verdict.
    assert state[ids[3]][0] == "pending" and state[ids[4]] == ("accepted", "human", "exact_dup")
    with Session(committed) as db:
        advice = db.get(Record, ids[4]).meta["advice"]["dedup"]  # type: ignore[union-attr]
    assert advice["reason"] == "exact_dup" and advice["job_id"] == job.id and str(ids[3]) in advice["detail"]
    assert job.result["human_advised"] == 1
    assert _disagreements(committed, curator, dataset_id) == {ids[4]}


def test_dedup_changes_human_decisions_only_when_the_curator_asks(committed: Engine):
    dataset_id, curator, ids = _dataset(committed, POEMS)
    _accept_in_review(committed, curator, ids[1])
    _decide(committed, curator, ids[4], status="accepted")
    job = run_job_now(
        committed,
        curator,
        dataset_id,
        "dedup",
        {"field": "instruction", "threshold": 0.7, "override_human": True},
    )
    state = _state(committed, ids)
    # Plain id order, every record the machine's: the accepted near-duplicate and exact duplicate go.
    assert state[ids[0]][0] == "pending"
    assert state[ids[1]][:2] == ("filtered", "rouge_dup") and state[ids[4]][:2] == ("filtered", "exact_dup")
    assert job.result["human_overridden"] == 2
    assert _disagreements(committed, curator, dataset_id) == set()


def test_rules_keep_what_people_decided_unless_the_curator_asks(committed: Engine):
    dataset_id, curator, ids = _dataset(committed, POEMS)
    _decide(committed, curator, ids[2], rating=4)
    job = run_job_now(committed, curator, dataset_id, "rules", {"rules": ["empty_output"]})
    state = _state(committed, ids)
    assert state[ids[5]][:2] == ("filtered", "empty_output")
    assert state[ids[2]] == ("pending", None, "empty_output")  # rated by a person: advice only
    assert job.result["human_advised"] == 1
    assert _disagreements(committed, curator, dataset_id) == {ids[2]}
    run_job_now(committed, curator, dataset_id, "rules", {"rules": ["empty_output"], "override_human": True})
    assert _state(committed, [ids[2]])[ids[2]][:2] == ("filtered", "empty_output")


def test_judge_keeps_what_people_decided_and_never_rewrites_a_status_it_read(committed: Engine, teacher: Any):
    rows = [(f"Explain topic number {n} in two sentences.", f"Answer {n} is brief.") for n in range(24)]
    dataset_id, curator, ids = _dataset(committed, rows)
    human = ids[:8]
    for rid in human[:4]:
        _accept_in_review(committed, curator, rid)
    _decide(committed, curator, human[4], rating=4)
    _decide(committed, curator, human[5], output="A better, edited answer.")
    _decide(committed, curator, human[6], status="rejected")
    job = run_job_now(committed, curator, dataset_id, "judge", {"teacher": "fake", "threshold": 5.0})
    with Session(committed) as db:
        got = {r.id: r for r in db.scalars(select(Record).where(Record.dataset_id == dataset_id))}
    expected_human = {
        human[n]: s for n, s in enumerate(["accepted"] * 4 + ["pending", "pending", "rejected"])
    }
    below = [r for r in got.values() if r.judge_score is not None and r.judge_score < 5.0]
    assert any(r.id in expected_human for r in below), "the fake judge must score a human record low"
    assert any(r.id not in expected_human for r in below)
    for rid, status in expected_human.items():
        r = got[rid]
        assert r.status == status, (rid, r.status, r.meta.get("judge"))
        assert (r.advice == "judge_below") == (r.judge_score is not None and r.judge_score < 5.0)
    for r in got.values():
        if r.id not in expected_human and r.id != human[7]:
            low = r.judge_score is not None and r.judge_score < 5.0
            assert r.status == ("filtered" if low else "pending") and r.advice is None
    disagreeing = {rid for rid, s in expected_human.items() if s != "rejected" and got[rid].advice}
    assert _disagreements(committed, curator, dataset_id) == disagreeing
    # The review page shows the judge's verdict beside the person's decision.
    with Session(committed) as db:
        shown = review.review_items(db=db, rows=[db.get(Record, min(disagreeing))])[0].machine
    assert shown.human_decided and [(a.kind, a.reason) for a in shown.advice] == [("judge", "judge_below")]
    assert shown.advice[0].detail is not None and "< 5.0" in shown.advice[0].detail
    assert job.result["human_advised"] == sum(1 for rid in expected_human if got[rid].advice)


def test_an_undone_decision_gives_the_record_back_to_the_machine(committed: Engine):
    dataset_id, curator, ids = _dataset(committed, POEMS)
    _accept_in_review(committed, curator, ids[5])
    with Session(committed) as db:
        review.undo_last(db=db, user=db.merge(curator), dataset_id=dataset_id)
        db.commit()
    run_job_now(committed, curator, dataset_id, "rules", {"rules": ["empty_output"]})
    assert _state(committed, [ids[5]])[ids[5]][:2] == ("filtered", "empty_output")


def test_human_decided_and_disagreement_filters_count_for_a_form(client, db: Session, backend: str):
    from tests.factories import token_for

    curator = make_user(db, "curator")
    dataset = make_dataset(db, make_project(db, (curator, "curator")))
    recs = [
        Record(dataset_id=dataset.id, instruction=f"Task {n}", output="x", source="human") for n in range(3)
    ]
    db.add_all(recs)
    db.flush()
    headers = token_for(db, curator)
    res = client.patch(
        f"/api/v1/records/{recs[0].id}", json={"version": 1, "status": "accepted"}, headers=headers
    )
    assert res.status_code == 200 and res.json()["human_decided"] is True
    res = client.get(
        f"/api/v1/datasets/{dataset.id}/records", params={"human_decided": "true"}, headers=headers
    )
    assert [r["id"] for r in res.json()["items"]] == [recs[0].id]
    # Tags alone are not a decision.
    res = client.patch(f"/api/v1/records/{recs[1].id}", json={"version": 1, "tags": ["x"]}, headers=headers)
    assert res.json()["human_decided"] is False
