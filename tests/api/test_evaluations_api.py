"""POST /evaluations refuses what it cannot run with a 4xx naming the field, and stores nothing then."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from app.audit.models import AuditLog
from app.evaluation.models import Evaluation
from app.jobs.models import Job
from app.records.schemas import RecordFilter
from app.snapshots import service as snapshots
from app.training.models import TrainingRun
from tests.factories import make_dataset, make_project, make_records, make_user, token_for


@pytest.fixture
def setup(db, teacher) -> dict[str, Any]:
    curator = make_user(db, "curator")
    project = make_project(db, (curator, "curator"))
    dataset = make_dataset(db, project)
    make_records(db, dataset, 3, status="accepted")
    snap = snapshots.create_snapshot(
        db=db,
        user=curator,
        dataset_id=dataset.id,
        name="s",
        description="",
        flt=RecordFilter(status=["accepted"]),
    )
    queued = Job(project_id=project.id, kind="train", queue="gpu", params={}, status="running")
    db.add(queued)
    db.flush()
    running = TrainingRun(
        project_id=project.id, snapshot_id=snap.id, job_id=queued.id, base_model="m", method="lora", config={}
    )
    db.add(running)
    db.flush()
    return {
        "curator": curator,
        "h": token_for(db, curator),
        "dataset": dataset.id,
        "snapshot": snap.id,
        "running_run": running.id,
        "project": project.id,
    }


TEACHERS = [
    {"kind": "teacher", "teacher": "fake", "name": "a"},
    {"kind": "teacher", "teacher": "fake", "name": "b"},
]


def _post(client, setup, **changes: Any) -> Any:
    body = {"dataset_id": setup["dataset"], "systems": TEACHERS, "judge_teacher": "fake", **changes}
    body = {k: v for k, v in body.items() if v is not ...}
    return client.post("/api/v1/evaluations", json=body, headers=setup["h"])


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"judge_teacher": "nobody"}, "judge_teacher"),
        ({"systems": TEACHERS[:1]}, "systems"),
        ({"systems": []}, "systems"),
        ({"systems": [TEACHERS[0], {"kind": "teacher", "teacher": "ghost"}]}, "systems.1.teacher"),
        ({"systems": [TEACHERS[0], {"kind": "base", "base_model": "../../etc"}]}, "systems.1.base_model"),
        ({"systems": [TEACHERS[0], {"kind": "base"}]}, "systems.1.base_model"),
        ({"systems": [{"kind": "run", "training_run_id": 999999}, TEACHERS[0]]}, "systems.0.training_run_id"),
        ({"systems": [{"kind": "wizard"}, TEACHERS[0]]}, "systems.0.kind"),
        ({"systems": "two"}, "systems"),
        ({"systems": [TEACHERS[0], TEACHERS[0]]}, "systems"),
        ({"snapshot_id": 1}, "snapshot_id"),
        ({"dataset_id": ...}, "snapshot_id"),
        ({"split": "validation"}, "split"),
        ({"split": "test"}, "split"),
        ({"val_fraction": 1.5}, "val_fraction"),
        ({"generation": {"max_new_tokens": 0}}, "generation.max_new_tokens"),
        ({"judge_teacher": ...}, "judge_teacher"),
        ({"budget_usd": -1}, "budget_usd"),
    ],
)
def test_invalid_evaluations_are_422_naming_the_field_and_store_nothing(client, db, setup, changes, field):
    before = db.scalar(select(func.count()).select_from(Evaluation))
    response = _post(client, setup, **changes)
    assert response.status_code == 422, response.text
    assert field in response.json()["detail"]
    assert db.scalar(select(func.count()).select_from(Evaluation)) == before


def test_a_run_that_has_not_succeeded_is_refused_naming_it(client, setup):
    systems = [{"kind": "run", "training_run_id": setup["running_run"]}, TEACHERS[0]]
    response = _post(client, setup, systems=systems)
    assert response.status_code == 422
    assert "systems.0.training_run_id" in response.json()["detail"] and "running" in response.json()["detail"]


def test_annotators_and_outsiders_cannot_create_and_outsiders_cannot_see(client, db, setup):
    annotator = make_user(db, "annotator")
    from app.projects.models import ProjectMember

    db.add(ProjectMember(project_id=setup["project"], user_id=annotator.id, role="annotator"))
    db.flush()
    body = {"dataset_id": setup["dataset"], "systems": TEACHERS, "judge_teacher": "fake"}
    as_annotator = client.post("/api/v1/evaluations", json=body, headers=token_for(db, annotator))
    assert as_annotator.status_code in (403, 404)
    outsider = token_for(db, make_user(db, "curator"))
    assert client.post("/api/v1/evaluations", json=body, headers=outsider).status_code == 404
    created = _post(client, setup)
    assert created.status_code == 202, created.text
    evaluation_id = created.json()["id"]
    assert client.get(f"/api/v1/evaluations/{evaluation_id}", headers=outsider).status_code == 404
    assert (
        client.get(f"/api/v1/evaluations/{evaluation_id}/export.jsonl", headers=outsider).status_code == 404
    )


def test_created_evaluation_is_queued_listed_audited_and_cancellable(client, db, setup):
    created = _post(client, setup, name="teachers", scores=True)
    assert created.status_code == 202, created.text
    ev = created.json()
    assert ev["status"] == "queued" and [s["name"] for s in ev["systems"]] == ["a", "b"]
    assert ev["params"]["scores"] is True and ev["params"]["language"] == "en"
    job = db.get(Job, ev["job_id"])
    assert job is not None and job.kind == "evaluate" and job.queue == "gpu"
    assert job.params == {"evaluation_id": ev["id"]}
    listed = client.get(f"/api/v1/evaluations?project_id={setup['project']}", headers=setup["h"]).json()
    assert [e["id"] for e in listed] == [ev["id"]]
    detail = client.get(f"/api/v1/evaluations/{ev['id']}", headers=setup["h"]).json()
    assert detail["results"] == {} and detail["name"] == "teachers"
    assert db.scalar(select(AuditLog).where(AuditLog.action == "evaluation.create")) is not None
    cancelled = client.post(f"/api/v1/evaluations/{ev['id']}/cancel", headers=setup["h"])
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    resumed = client.post(f"/api/v1/evaluations/{ev['id']}/resume", headers=setup["h"])
    assert resumed.status_code == 422  # only a paused or failed evaluation resumes


def test_evaluate_against_base_refuses_an_unknown_judge_and_a_missing_run(client, setup):
    base = "/api/v1/training-runs"
    missing = client.post(
        f"{base}/999999/evaluate-against-base", json={"judge_teacher": "fake"}, headers=setup["h"]
    )
    assert missing.status_code == 404
    no_split = client.post(
        f"{base}/{setup['running_run']}/evaluate-against-base",
        json={"judge_teacher": "fake", "split": "validation"},
        headers=setup["h"],
    )
    assert no_split.status_code == 422 and "split" in no_split.json()["detail"]
    unfinished = client.post(
        f"{base}/{setup['running_run']}/evaluate-against-base",
        json={"judge_teacher": "fake"},
        headers=setup["h"],
    )
    assert unfinished.status_code == 422 and "training_run_id" in unfinished.json()["detail"]
