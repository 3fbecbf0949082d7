"""Job forms: a curator who lets a machine job overturn people's decisions sees how many, and confirms."""

from __future__ import annotations

import re

from sqlalchemy.orm import Session

from app.jobs.models import Job
from app.records.models import Record
from tests.factories import make_dataset, make_project, make_records, make_user
from tests.ui.test_pages import login


def test_override_form_says_how_many_human_decisions_it_touches_and_asks_to_confirm(client, db: Session):
    curator = make_user(db, "curator")
    ds = make_dataset(db, make_project(db, (curator, "curator")))
    recs = make_records(db, ds, 5)
    for r in recs[:2]:
        r.status, r.human_decided = "accepted", True
    recs[2].human_decided, recs[2].rating = True, 4  # rated, still pending
    recs[3].status, recs[3].human_decided = "rejected", True  # outside the default scope
    db.flush()
    token = login(client, curator)

    page = client.get(f"/ui/datasets/{ds.id}/jobs/new/judge")
    assert page.status_code == 200
    assert re.search(r'class="human-count" data-count="3"', page.text)

    form = {"csrf_token": token, "teacher": "any", "override_human": "on"}
    ask = client.post(f"/ui/datasets/{ds.id}/jobs/new/dedup", data=form, follow_redirects=False)
    assert ask.status_code == 409 and "3 records" in ask.text
    assert 'name="confirm_override" value="3"' in ask.text
    assert db.query(Job).filter(Job.dataset_id == ds.id).count() == 0

    # A stale confirmation (someone decided one more record meanwhile) asks again with the new count.
    recs[4].human_decided = True
    db.flush()
    again = client.post(
        f"/ui/datasets/{ds.id}/jobs/new/dedup", data={**form, "confirm_override": "3"}, follow_redirects=False
    )
    assert again.status_code == 409 and 'value="4"' in again.text

    ok = client.post(
        f"/ui/datasets/{ds.id}/jobs/new/dedup", data={**form, "confirm_override": "4"}, follow_redirects=False
    )
    assert ok.status_code == 303
    job = db.query(Job).filter(Job.dataset_id == ds.id).one()
    assert job.params["override_human"] is True


def test_a_job_without_override_starts_at_once(client, db: Session):
    curator = make_user(db, "curator")
    ds = make_dataset(db, make_project(db, (curator, "curator")))
    db.add(Record(dataset_id=ds.id, instruction="x", output="y", status="accepted", human_decided=True))
    db.flush()
    token = login(client, curator)
    ok = client.post(
        f"/ui/datasets/{ds.id}/jobs/new/dedup", data={"csrf_token": token}, follow_redirects=False
    )
    assert ok.status_code == 303


def test_records_page_lists_the_disagreements_with_the_machines_advice(client, db: Session):
    curator = make_user(db, "curator")
    ds = make_dataset(db, make_project(db, (curator, "curator")))
    recs = make_records(db, ds, 3)
    recs[0].status, recs[0].human_decided, recs[0].advice = "accepted", True, "judge_below"
    recs[1].status, recs[1].human_decided = "accepted", True
    recs[2].advice = "rouge_dup"  # not decided by a person: no disagreement
    db.flush()
    login(client, curator)
    page = client.get(f"/ui/datasets/{ds.id}/records", params={"decided": "disagreement"})
    assert page.status_code == 200
    ids = re.findall(r"review\?record=(\d+)", page.text)
    assert ids == [str(recs[0].id)]
    assert 'class="advice"' in page.text and "judge_below" in page.text
    assert 'value="disagreement" selected' in page.text
    human = client.get(f"/ui/datasets/{ds.id}/records", params={"decided": "human"})
    assert sorted(re.findall(r"review\?record=(\d+)", human.text)) == sorted(
        [str(recs[0].id), str(recs[1].id)]
    )
