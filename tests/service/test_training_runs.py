"""Training runs through the service: validation, the gpu-queue worker running the trainer, artifacts."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit.models import AuditLog
from app.config import get_settings
from app.jobs.models import Job
from app.records.schemas import RecordFilter
from app.snapshots import service as snapshots
from app.training import service as training
from app.training.models import TrainingMetric, TrainingRun
from tests.api.test_visibility import make_run
from tests.conftest import PG_URL
from tests.factories import make_dataset, make_project, make_records, make_user, token_for
from tests.model_folders import REFUSED, USABLE, build_models_dir
from tests.procs import kill, service_env, start_worker

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    from tests.trainer.conftest import _save_model, _tokenizer

    root = tmp_path_factory.mktemp("models")
    _save_model(root / "tiny-llama", _tokenizer(None))
    return root


@pytest.fixture
def models_setting(models_dir, monkeypatch) -> Path:
    monkeypatch.setattr(get_settings(), "models_dir", models_dir)
    return models_dir


def _snapshot(db, n: int = 12):
    curator = make_user(db, "curator")
    dataset = make_dataset(db, make_project(db, (curator, "curator")))
    pairs = [
        ("Name a primary colour.", "Red."),
        ("What is two plus two?", "Four."),
        ("Translate 'cat' into French.", "Chat."),
        ("Give the opposite of 'hot'.", "Cold."),
    ]
    for i in range(n):
        q, a = pairs[i % len(pairs)]
        make_records(db, dataset, 1, instruction=q, output=a, status="accepted", gen_key=f"t{i}")
    snap = snapshots.create_snapshot(
        db=db,
        user=curator,
        dataset_id=dataset.id,
        name="s",
        description="",
        flt=RecordFilter(status=["accepted"]),
    )
    return curator, snap


def test_training_run_refuses_models_outside_the_models_dir_and_bad_hyperparameters(
    client, db, models_setting
):
    curator, snap = _snapshot(db)
    h = token_for(db, curator)

    def post(**body):
        return client.post("/api/v1/training-runs", json={"snapshot_id": snap.id, **body}, headers=h)

    assert "inside the models directory" in post(base_model="../../etc").json()["detail"]
    assert post(base_model="/etc").status_code == 422
    assert "not a Hugging Face model folder" in post(base_model="missing").json()["detail"]
    bad = post(base_model="tiny-llama", hyperparameters={"lr": -1})
    assert bad.status_code == 422 and "hyperparameters.lr" in bad.json()["detail"]
    reserved = post(base_model="tiny-llama", hyperparameters={"output_dir": "/tmp/x"})
    assert reserved.status_code == 422 and "output_dir" in reserved.json()["detail"]
    annotator = make_user(db, "annotator")
    assert (
        client.post(
            "/api/v1/training-runs",
            json={"snapshot_id": snap.id, "base_model": "tiny-llama"},
            headers=token_for(db, annotator),
        ).status_code
        == 404
    )
    ok = post(base_model="tiny-llama", hyperparameters={"max_steps": 2})
    assert ok.status_code == 202, ok.text
    run = ok.json()
    assert run["status"] == "queued" and run["config"]["max_steps"] == 2 and run["code_version"]
    assert run["config"]["base_model"].endswith("tiny-llama")


def test_artifact_download_refuses_path_traversal(client, db, models_setting, tmp_path):
    curator, snap = _snapshot(db)
    h = token_for(db, curator)
    run_id = client.post(
        "/api/v1/training-runs", json={"snapshot_id": snap.id, "base_model": "tiny-llama"}, headers=h
    ).json()["id"]
    run = db.get(TrainingRun, run_id)
    Path(run.artifacts_dir).mkdir(parents=True, exist_ok=True)
    (Path(run.artifacts_dir) / "summary.json").write_text('{"ok": true}')
    (tmp_path / "secret.txt").write_text("secret")
    base = f"/api/v1/training-runs/{run_id}/artifacts"
    assert client.get(f"{base}/summary.json", headers=h).json() == {"ok": True}
    assert [a["path"] for a in client.get(base, headers=h).json()] == ["summary.json"]
    for evil in ("../../../../etc/passwd", "..%2F..%2Fsecret.txt", "%2Fetc%2Fpasswd"):
        assert client.get(f"{base}/{evil}", headers=h).status_code == 404


@pytest.mark.slow
def test_gpu_worker_trains_streams_metrics_and_produces_a_loadable_adapter(
    committed_pg, models_dir, redis_url, tmp_path, monkeypatch
):
    monkeypatch.setattr(get_settings(), "models_dir", models_dir)
    with Session(committed_pg) as db:
        curator, snap = _snapshot(db)
        db.commit()
        run = training.create_run(
            db=db,
            user=curator,
            snapshot_id=snap.id,
            base_model="tiny-llama",
            method="lora",
            hyperparameters={
                "max_steps": 30,
                "batch_size": 4,
                "grad_accum": 1,
                "lr": 3e-3,
                "logging_steps": 5,
                "eval_steps": 0,
                "val_fraction": 0.0,
                "sample_prompts": 2,
                "gradient_checkpointing": False,
                "max_seq_len": 128,
            },
        )
        run_id, job_id = run.id, run.job_id
    app = Celery(broker=redis_url)
    app.send_task("workers.tasks.run_job_task", args=[job_id], queue="gpu")
    app.close()
    env = service_env(
        database_url=PG_URL,
        broker_url=redis_url,
        data_dir=Path(os.environ["IF_DATA_DIR"]),
        IF_MODELS_DIR=str(models_dir),
    )
    worker = start_worker(env, tmp_path / "gpu.log", queues="gpu")
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            with Session(committed_pg) as db:
                job = db.get(Job, job_id)
                if job.status in ("succeeded", "failed", "cancelled"):
                    break
            time.sleep(1)
    finally:
        kill(worker)
    with Session(committed_pg) as db:
        job = db.get(Job, job_id)
        assert job.status == "succeeded", (job.error, (tmp_path / "gpu.log").read_text()[-3000:])
        run = db.get(TrainingRun, run_id)
        steps = db.scalars(
            select(TrainingMetric.step).where(TrainingMetric.run_id == run_id).order_by(TrainingMetric.step)
        ).all()
        losses = db.scalars(
            select(TrainingMetric.loss).where(TrainingMetric.run_id == run_id).order_by(TrainingMetric.step)
        ).all()
    assert steps == sorted(set(steps)) and len(steps) >= 5
    assert losses[-1] < losses[0]
    assert run.summary and job.progress_done == job.progress_total == 30
    out = Path(run.artifacts_dir)
    assert (out / "adapter" / "adapter_config.json").is_file()
    from trainer.infer import generate, load_for_inference

    model, tokenizer, fmt = load_for_inference(out)
    texts = generate(model, tokenizer, fmt, ["Name a primary colour."], max_new_tokens=8)
    assert isinstance(texts[0], str)


@pytest.mark.slow
def test_cancel_stops_the_trainer_between_steps_and_frees_the_worker(
    committed_pg, models_dir, redis_url, tmp_path, monkeypatch
):
    import json

    from app.jobs import service as jobs

    monkeypatch.setattr(get_settings(), "models_dir", models_dir)
    with Session(committed_pg) as db:
        curator, snap = _snapshot(db)
        db.commit()
        run = training.create_run(
            db=db,
            user=curator,
            snapshot_id=snap.id,
            base_model="tiny-llama",
            method="lora",
            hyperparameters={
                "max_steps": 100_000,
                "batch_size": 2,
                "grad_accum": 1,
                "logging_steps": 1,
                "eval_steps": 0,
                "val_fraction": 0.0,
                "gradient_checkpointing": False,
                "max_seq_len": 128,
                "save_steps": 1000,
            },
        )
        run_id, job_id = run.id, run.job_id
        artifacts = Path(run.artifacts_dir)
    app = Celery(broker=redis_url)
    app.send_task("workers.tasks.run_job_task", args=[job_id], queue="gpu")
    app.close()
    env = service_env(
        database_url=PG_URL,
        broker_url=redis_url,
        data_dir=Path(os.environ["IF_DATA_DIR"]),
        IF_MODELS_DIR=str(models_dir),
        IF_JOB_LEASE_SECONDS="4",
    )
    worker = start_worker(env, tmp_path / "gpu.log", queues="gpu")
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            with Session(committed_pg) as db:
                if db.scalar(select(TrainingMetric.id).where(TrainingMetric.run_id == run_id).limit(1)):
                    break
            time.sleep(0.5)
        with Session(committed_pg) as db:
            jobs.cancel_job(db=db, user=db.merge(curator), job_id=job_id)
            db.commit()
        deadline = time.time() + 90
        while time.time() < deadline:
            with Session(committed_pg) as db:
                status = db.get(Job, job_id).status
            if status != "running":
                break
            time.sleep(0.5)
    finally:
        kill(worker)
    assert status == "cancelled"
    state = json.loads((artifacts / "status.json").read_text())
    assert state["state"] == "cancelled" and 0 < state["step"] < 100_000


# --- base models: the check the form and the CLI share ----------------------------------------------------


@pytest.fixture(scope="module")
def checked_models_dir(tmp_path_factory) -> Path:
    return build_models_dir(tmp_path_factory.mktemp("checked-models"))


def test_base_models_lists_every_folder_usable_or_with_the_reason_it_is_refused(
    client, db, checked_models_dir, monkeypatch
):
    monkeypatch.setattr(get_settings(), "models_dir", checked_models_dir)
    resp = client.get("/api/v1/base-models", headers=token_for(db, make_user(db, "annotator")))
    assert resp.status_code == 200
    models = {m["name"]: m for m in resp.json()}
    assert {n for n, m in models.items() if m["ok"]} == set(USABLE)
    for name, words in REFUSED.items():
        assert words in models[name]["reason"], models[name]
    chat = models["tiny-llama-chat"]
    assert chat["chat_template"] and chat["prompt_format"] == "the tokenizer's chat template"
    assert chat["model_type"] == "llama" and chat["parameters"] > 0 and chat["size_bytes"] > 0
    assert str(checked_models_dir) not in resp.text  # names only: no server paths


def test_a_run_on_a_refused_model_is_422_naming_the_model_and_why(
    client, db, checked_models_dir, monkeypatch
):
    monkeypatch.setattr(get_settings(), "models_dir", checked_models_dir)
    curator, snap = _snapshot(db)
    h = token_for(db, curator)
    for name, words in REFUSED.items():
        if name == "notes":  # no config.json: the older message, kept
            continue
        resp = client.post(
            "/api/v1/training-runs", json={"snapshot_id": snap.id, "base_model": name}, headers=h
        )
        assert resp.status_code == 422, resp.text
        assert f"base_model '{name}' is refused: " in resp.json()["detail"] and words in resp.json()["detail"]
    assert db.scalar(select(TrainingRun.id).where(TrainingRun.snapshot_id == snap.id)) is None
    ok = client.post(
        "/api/v1/training-runs", json={"snapshot_id": snap.id, "base_model": "tiny-llama-chat"}, headers=h
    )
    assert ok.status_code == 202, ok.text


# --- samples ----------------------------------------------------------------------------------------------


def test_samples_before_the_trainer_wrote_them_say_so_and_only_curators_read_them(client, db, tmp_path):
    curator, annotator = make_user(db, "curator"), make_user(db, "annotator")
    project = make_project(db, (curator, "curator"), (annotator, "annotator"))
    run = make_run(db, project.id, tmp_path / "run")
    url = f"/api/v1/training-runs/{run.id}/samples"
    assert client.get(url, headers=token_for(db, annotator)).status_code == 403
    assert client.get(url, headers=token_for(db, make_user(db, "curator"))).status_code == 404
    h = token_for(db, curator)
    (tmp_path / "run" / "samples.jsonl").write_text(
        '{"prompt": "a bare prompt", "reference": "r"}\nnot json\n[1]\n\n'
        '{"step": 7, "prompt": [{"role": "user", "content": "Hi"}], "generation": "Hello", "reference": "Hey"}\n'
    )
    got = client.get(url, headers=h).json()
    assert got["written"] and got["skipped_lines"] == 2
    views = db.scalars(select(AuditLog.detail).where(AuditLog.action == "training.samples_view")).all()
    assert views == [{"samples": 2}]  # snapshot data read: in the audit log, like a download
    assert got["samples"] == [
        {
            "step": None,
            "prompt": [{"role": "user", "content": "a bare prompt"}],
            "generation": "",
            "reference": "r",
        },
        {"step": 7, "prompt": [{"role": "user", "content": "Hi"}], "generation": "Hello", "reference": "Hey"},
    ]
    (tmp_path / "run" / "samples.jsonl").unlink()
    assert client.get(url, headers=h).json() == {"written": False, "samples": [], "skipped_lines": 0}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_the_samples_the_trainer_writes_are_served_by_step_with_prompt_generation_and_reference(
    committed, models_dir, monkeypatch
):
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.projects.models import ProjectMember
    from workers.runner import run_job

    monkeypatch.setattr(get_settings(), "models_dir", models_dir)
    with Session(committed) as db:
        curator, snap = _snapshot(db)
        annotator = make_user(db, "annotator")
        db.commit()
        run = training.create_run(
            db=db,
            user=curator,
            snapshot_id=snap.id,
            base_model="tiny-llama",
            method="lora",
            hyperparameters={
                "max_steps": 3,
                "batch_size": 4,
                "grad_accum": 1,
                "logging_steps": 1,
                "eval_steps": 0,
                "val_fraction": 0.25,
                "sample_prompts": 2,
                "sample_max_new_tokens": 8,
                "gradient_checkpointing": False,
                "max_seq_len": 128,
            },
        )
        run_id, job_id, project_id = run.id, run.job_id, run.project_id
        db.add(ProjectMember(project_id=project_id, user_id=annotator.id, role="annotator"))
        curator_h, annotator_h = token_for(db, curator), token_for(db, annotator)
        db.commit()
    assert run_job(job_id) == "succeeded"  # the gpu worker's code path: the trainer runs as a child process
    with TestClient(create_app()) as client:
        resp = client.get(f"/api/v1/training-runs/{run_id}/samples", headers=curator_h)
        forbidden = client.get(f"/api/v1/training-runs/{run_id}/samples", headers=annotator_h)
    assert forbidden.status_code == 403
    assert resp.status_code == 200, resp.text
    got = resp.json()
    answers = {
        "Name a primary colour.": "Red.",
        "What is two plus two?": "Four.",
        "Translate 'cat' into French.": "Chat.",
        "Give the opposite of 'hot'.": "Cold.",
    }
    assert got["written"] and got["skipped_lines"] == 0 and len(got["samples"]) == 2
    for sample in got["samples"]:
        assert sample["step"] == 3
        question = sample["prompt"][-1]
        assert question["role"] == "user" and sample["reference"] == answers[question["content"]]
        assert isinstance(sample["generation"], str)
