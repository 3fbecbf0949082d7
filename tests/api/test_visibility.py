"""Issue 16 §3: who may see what. Training data follows the export rule, teacher addresses and the user list
are for admins, and a failed job tells its readers what happened without SQL, tracebacks or paths."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from app.jobs.models import Job
from app.projects.models import Project
from app.snapshots.models import Snapshot
from app.training.models import TrainingRun
from tests.factories import make_dataset, make_project, make_records, make_user, token_for


def make_run(db: Session, project_id: int, artifacts: Path) -> TrainingRun:
    """A finished run's rows and files, as the train job leaves them (no trainer needed)."""
    dataset = make_dataset(db, db.get_one(Project, project_id))
    make_records(db, dataset, 2, status="accepted")
    snap = Snapshot(dataset_id=dataset.id, name="s", description="", filter={}, content_hash="x")
    db.add(snap)
    db.flush()
    job = Job(project_id=project_id, kind="train", queue="gpu", params={}, status="succeeded")
    db.add(job)
    db.flush()
    artifacts.mkdir(parents=True, exist_ok=True)
    (artifacts / "dataset.jsonl").write_text('{"messages": [{"role": "user", "content": "secret data"}]}\n')
    (artifacts / "samples.jsonl").write_text('{"prompt": "secret data", "reference": "secret"}\n')
    (artifacts / "summary.json").write_text(json.dumps({"final_train_loss": 1.0}))
    run = TrainingRun(
        project_id=project_id,
        snapshot_id=snap.id,
        job_id=job.id,
        base_model="tiny",
        method="lora",
        artifacts_dir=str(artifacts),
    )
    db.add(run)
    db.flush()
    return run


@pytest.fixture
def team(db, tmp_path):
    admin, curator, annotator, outsider = (
        make_user(db, "admin"),
        make_user(db, "curator"),
        make_user(db, "annotator"),
        make_user(db, "curator"),
    )
    project = make_project(db, (curator, "curator"), (annotator, "annotator"))
    make_project(db, (outsider, "curator"))
    run = make_run(db, project.id, tmp_path / "run")
    return {
        "admin": admin,
        "curator": curator,
        "annotator": annotator,
        "outsider": outsider,
        "run": run,
    }


def test_an_annotator_cannot_download_the_training_data_of_a_run(client, db, team):
    h = token_for(db, team["annotator"])
    base = f"/api/v1/training-runs/{team['run'].id}/artifacts"
    assert client.get(f"{base}/dataset.jsonl", headers=h).status_code == 403
    assert client.get(f"{base}/samples.jsonl", headers=h).status_code == 403
    summary = client.get(f"{base}/summary.json", headers=h)
    assert summary.status_code == 200 and summary.json() == {"final_train_loss": 1.0}


def test_curators_download_training_data_and_outsiders_learn_nothing(client, db, team):
    base = f"/api/v1/training-runs/{team['run'].id}/artifacts"
    data = client.get(f"{base}/dataset.jsonl", headers=token_for(db, team["curator"]))
    assert data.status_code == 200 and "secret data" in data.text
    assert client.get(f"{base}/dataset.jsonl", headers=token_for(db, team["admin"])).status_code == 200
    outsider = token_for(db, team["outsider"])
    assert client.get(f"{base}/dataset.jsonl", headers=outsider).status_code == 404
    assert client.get(f"{base}/summary.json", headers=outsider).status_code == 404


def test_only_admins_list_users_with_their_roles(client, db, team):
    assert client.get("/api/v1/users", headers=token_for(db, team["curator"])).status_code == 403
    everyone = client.get("/api/v1/users", headers=token_for(db, team["admin"]))
    assert everyone.status_code == 200 and {"role", "is_active"} <= set(everyone.json()[0])


def test_curators_get_a_directory_of_names_to_add_members(client, db, team):
    resp = client.get("/api/v1/users/directory", headers=token_for(db, team["curator"]))
    assert resp.status_code == 200
    assert {u["username"] for u in resp.json()} >= {team["annotator"].username, team["outsider"].username}
    assert all(set(u) == {"id", "username"} for u in resp.json())
    assert client.get("/api/v1/users/directory", headers=token_for(db, team["annotator"])).status_code == 403


@pytest.fixture
def configured_teacher(monkeypatch):
    from app.config import get_settings

    config = [{"name": "big", "base_url": "http://10.0.0.7:8000/v1", "model": "m", "max_concurrency": 2}]
    monkeypatch.setattr(get_settings(), "teachers", json.dumps(config))


def test_teacher_addresses_are_shown_to_admins_only(client, db, team, configured_teacher):
    curator = client.get("/api/v1/teachers", headers=token_for(db, team["curator"]))
    assert curator.status_code == 200
    assert curator.json()[0]["name"] == "big" and curator.json()[0]["base_url"] is None
    assert "10.0.0.7" not in curator.text
    admin = client.get("/api/v1/teachers", headers=token_for(db, team["admin"]))
    assert admin.json()[0]["base_url"] == "http://10.0.0.7:8000/v1"


def _failing_job(engine) -> int:
    with Session(engine) as db:
        user = make_user(db, "curator")
        project = make_project(db, (user, "curator"))
        job = Job(project_id=project.id, kind="curate", params={}, created_by=user.id)
        db.add(job)
        db.commit()
        return job.id


def test_a_failed_job_shows_a_clear_message_and_logs_the_traceback(committed, caplog):
    from workers.runner import run_job

    job_id = _failing_job(committed)

    def handler(ctx: object) -> None:
        with Session(committed) as db:
            db.execute(text("SELECT no_such_column FROM users"))

    with caplog.at_level(logging.ERROR, logger="workers.runner"):
        assert run_job(job_id, handler=handler) == "failed"
    with Session(committed) as db:
        error = db.get_one(Job, job_id).error
    assert error is not None
    assert "internal error" in error and f"job {job_id}" in error and "log" in error
    for leak in ("SELECT", "no_such_column", "Traceback", ".py", "/"):
        assert leak not in error, error
    assert "no_such_column" in caplog.text and "Traceback" in caplog.text


def test_a_job_that_fails_on_bad_input_says_what_to_fix(committed):
    from app.errors import Invalid
    from workers.runner import run_job

    job_id = _failing_job(committed)

    def handler(ctx: object) -> None:
        raise Invalid('line 12: field "output": expected a string')

    assert run_job(job_id, handler=handler) == "failed"
    with Session(committed) as db:
        assert db.get_one(Job, job_id).error == 'line 12: field "output": expected a string'
