"""A record's lineage: the snapshots holding it -> the training runs on them -> their evaluations, over HTTP
(GET /api/v1/records/{id}/evaluations) and on the record's history page; hostile names stay text; a record
in no snapshot has an empty lineage; outsiders get a 404."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.orm import Session

from app.evaluation.models import Evaluation, EvaluationSystem
from app.jobs.models import Job
from app.records.schemas import RecordFilter
from app.snapshots import service as snapshots
from app.training.models import TrainingRun
from tests.factories import make_dataset, make_project, make_records, make_user, token_for
from tests.ui.test_pages import login

HOSTILE = '<img src=x onerror="window.__pwned=1">ablation'


def _job(db: Session, project_id: int, kind: str, status: str) -> Job:
    job = Job(project_id=project_id, kind=kind, queue="gpu", params={}, status=status)
    db.add(job)
    db.flush()
    return job


@pytest.fixture
def lineage(db: Session) -> dict[str, Any]:
    curator = make_user(db, "curator")
    project = make_project(db, (curator, "curator"))
    dataset = make_dataset(db, project)
    first, _second = make_records(db, dataset, 2, status="accepted")
    snap = snapshots.create_snapshot(
        db=db, user=curator, dataset_id=dataset.id, name="curated", description="", flt=RecordFilter()
    )
    later = snapshots.create_snapshot(
        db=db, user=curator, dataset_id=dataset.id, name="untrained", description="", flt=RecordFilter()
    )
    run = TrainingRun(
        project_id=project.id,
        snapshot_id=snap.id,
        job_id=_job(db, project.id, "train", "succeeded").id,
        base_model="tiny",
        method="lora",
        config={},
    )
    other_run = TrainingRun(
        project_id=project.id,
        snapshot_id=snap.id,
        job_id=_job(db, project.id, "train", "failed").id,
        base_model="tiny",
        method="lora",
        config={},
    )
    db.add_all([run, other_run])
    db.flush()
    evaluation = Evaluation(
        project_id=project.id,
        name=HOSTILE,
        snapshot_id=snap.id,
        judge_teacher="fake",
        params={},
        job_id=_job(db, project.id, "evaluate", "succeeded").id,
    )
    db.add(evaluation)
    db.flush()
    db.add(
        EvaluationSystem(
            evaluation_id=evaluation.id,
            position=0,
            name="curated run",
            kind="run",
            base_model="tiny",
            training_run_id=run.id,
        )
    )
    db.add(
        EvaluationSystem(evaluation_id=evaluation.id, position=1, name="base", kind="base", base_model="tiny")
    )
    unrelated = make_records(db, make_dataset(db, project), 1)[0]
    db.commit()
    return {
        "curator": curator,
        "record": first.id,
        "unrelated": unrelated.id,
        "snap": snap.id,
        "later": later.id,
        "run": run.id,
        "other_run": other_run.id,
        "evaluation": evaluation.id,
    }


def test_the_record_api_lists_snapshots_runs_and_their_evaluations(client, db, lineage):
    h = token_for(db, lineage["curator"])
    resp = client.get(f"/api/v1/records/{lineage['record']}/evaluations", headers=h)
    assert resp.status_code == 200, resp.text
    rows = [
        (r["snapshot_id"], r["training_run_id"], r["training_status"], r["evaluation_id"], r["system"])
        for r in resp.json()
    ]
    assert rows == [
        (lineage["later"], None, None, None, None),
        (lineage["snap"], lineage["other_run"], "failed", None, None),
        (lineage["snap"], lineage["run"], "succeeded", lineage["evaluation"], "curated run"),
    ]
    evaluated = resp.json()[-1]
    assert evaluated["evaluation_name"] == HOSTILE and evaluated["evaluation_status"] == "succeeded"
    assert evaluated["snapshot_name"] == "curated" and evaluated["record_version"] >= 1
    empty = client.get(f"/api/v1/records/{lineage['unrelated']}/evaluations", headers=h)
    assert empty.status_code == 200 and empty.json() == []


def test_outsiders_and_unknown_records_are_404(client, db, lineage):
    outsider = token_for(db, make_user(db, "curator"))
    db.commit()
    resp = client.get(f"/api/v1/records/{lineage['record']}/evaluations", headers=outsider)
    assert resp.status_code == 404
    h = token_for(db, lineage["curator"])
    db.commit()
    assert client.get("/api/v1/records/999999999/evaluations", headers=h).status_code == 404


def test_the_history_page_links_the_record_to_its_evaluations(client, db, lineage):
    login(client, lineage["curator"])
    page = client.get(f"/ui/records/{lineage['record']}/history")
    assert page.status_code == 200
    html = page.text
    assert 'data-role="lineage"' in html
    assert f'href="/ui/evaluations/{lineage["evaluation"]}"' in html
    assert f'href="/ui/training/{lineage["run"]}"' in html
    assert f'href="/ui/snapshots/{lineage["snap"]}"' in html
    assert "not evaluated" in html and "not trained" in html
    # The evaluation's name is text, never markup.
    assert HOSTILE not in html and "&lt;img src=x" in html
    none = client.get(f"/ui/records/{lineage['unrelated']}/history").text
    assert 'data-role="lineage-empty"' in none
