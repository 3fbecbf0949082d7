"""Ablations as one action: two snapshots trained the same way (tiny local model, CPU) and then evaluated
against each other and the base, the evaluation waiting paused (no worker held) until both runs succeed; a
run that fails fails the evaluation naming it; a bad request is a 4xx naming the field and stores nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.config import get_settings
from app.evaluation import ablations
from app.evaluation.models import Evaluation, EvaluationSystem
from app.evaluation.schemas import AblationCreate
from app.jobs.models import Job
from app.records.schemas import RecordFilter
from app.snapshots import service as snapshots
from app.training.models import TrainingRun
from tests.factories import job_row, make_records, token_for
from workers.runner import run_job

TINY = {
    "max_steps": 10,
    "batch_size": 4,
    "grad_accum": 1,
    "lr": 3e-3,
    "logging_steps": 5,
    "eval_steps": 0,
    "val_fraction": 0.0,
    "sample_prompts": 0,
    "gradient_checkpointing": False,
    "max_seq_len": 128,
}


def _two_snapshots(db: Session) -> tuple[Any, int, int, int]:
    """'first': 12 records; 'more': the same and 4 more."""
    from tests.service.test_training_runs import _snapshot

    curator, first = _snapshot(db)
    dataset_id = first.dataset_id
    from app.datasets.models import Dataset

    dataset = db.get(Dataset, dataset_id)
    make_records(db, dataset, 4, instruction="Name a fruit.", output="Apple.", status="accepted")
    more = snapshots.create_snapshot(
        db=db,
        user=curator,
        dataset_id=dataset_id,
        name="more",
        description="",
        flt=RecordFilter(status=["accepted"]),
    )
    return curator, first.id, more.id, dataset_id


def _tiny_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.trainer.conftest import _save_model, _tokenizer

    models = tmp_path / "models"
    _save_model(models / "tiny-llama", _tokenizer(None))
    monkeypatch.setattr(get_settings(), "models_dir", models)


def _ablate(committed: Any, **changes: Any) -> tuple[Any, dict[str, Any]]:
    with Session(committed) as db:
        curator, first, more, _ = _two_snapshots(db)
        db.commit()
        body = {
            "snapshot_ids": [first, more],
            "base_model": "tiny-llama",
            "hyperparameters": TINY,
            "snapshot_id": first,
            "max_prompts": 4,
            "judge_teacher": "fake",
            "generation": {"max_new_tokens": 8, "batch_size": 4},
            **changes,
        }
        out = ablations.create_ablation(db=db, user=curator, body=AblationCreate.model_validate(body))
        return out, {"first": first, "more": more}


def _train_job(engine: Any, run_id: int) -> int:
    with Session(engine) as db:
        run = db.get(TrainingRun, run_id)
        assert run is not None
        return run.job_id


def test_an_ablation_trains_both_snapshots_then_evaluates_them(committed, teacher, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    _tiny_model(tmp_path, monkeypatch)
    out, snaps = _ablate(committed)
    assert out.status == "paused" and len(out.training_run_ids) == 2
    with Session(committed) as db:
        runs = [db.get(TrainingRun, r) for r in out.training_run_ids]
        assert [r.snapshot_id for r in runs if r] == [snaps["first"], snaps["more"]]
        assert runs[0] and runs[1] and runs[0].config == runs[1].config  # trained the same way
        names = db.scalars(
            select(EvaluationSystem.name)
            .where(EvaluationSystem.evaluation_id == out.evaluation_id)
            .order_by(EvaluationSystem.position)
        ).all()
    assert len(names) == 3 and names[2] == "base tiny-llama"
    first_job, second_job = (_train_job(committed, r) for r in out.training_run_ids)
    assert run_job(first_job) == "succeeded", job_row(committed, first_job).error
    waiting = job_row(committed, out.evaluation_job_id)
    assert waiting.status == "paused" and f"run {out.training_run_ids[1]}" in (waiting.error or "")
    # Resumed early by hand, the evaluation pauses again and holds no worker
    assert (
        run_job(out.evaluation_job_id) is None or job_row(committed, out.evaluation_job_id).status == "paused"
    )
    assert run_job(second_job) == "succeeded", job_row(committed, second_job).error
    assert job_row(committed, out.evaluation_job_id).status == "queued"
    assert run_job(out.evaluation_job_id) == "succeeded", job_row(committed, out.evaluation_job_id).error
    with Session(committed) as db:
        evaluation = db.get(Evaluation, out.evaluation_id)
        assert evaluation is not None
        results = evaluation.results
    assert results["systems"] == names and results["prompts"] == 4
    assert len([r for r in results["pairwise"]["win_rates"] if r["category"] is None]) == 3


def test_a_failed_run_fails_the_evaluation_naming_it(committed, teacher, tmp_path, monkeypatch):
    _tiny_model(tmp_path, monkeypatch)
    out, snaps = _ablate(committed)
    bad = out.training_run_ids[1]
    with Session(committed) as db:
        run = db.get(TrainingRun, bad)
        assert run is not None
        blocker = tmp_path / "not-a-folder"
        blocker.write_text("x")
        run.artifacts_dir = str(blocker / "run")  # the worker cannot make it: the run fails
        db.commit()
    assert run_job(_train_job(committed, bad)) == "failed"
    job = job_row(committed, out.evaluation_job_id)
    assert job.status == "failed"
    assert f"training run {bad} (snapshot {snaps['more']}) failed" in (job.error or "")
    # Resumed by hand, it fails again with the run's name, before generating anything
    with Session(committed) as db:
        row = db.get(Job, out.evaluation_job_id)
        assert row is not None
        row.status = "queued"
        db.commit()
    assert run_job(out.evaluation_job_id) == "failed"
    assert f"training run {bad} (snapshot {snaps['more']}) failed" in (
        job_row(committed, out.evaluation_job_id).error or ""
    )


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"snapshot_ids": "one"}, "snapshot_ids"),
        ({"judge_teacher": "nobody"}, "judge_teacher"),
        ({"base_model": "../etc"}, "base_model"),
        ({"hyperparameters": {"lr": "fast"}}, "hyperparameters"),
        ({"hyperparameters": {"output_dir": "/tmp"}}, "hyperparameters"),
        ({"snapshot_id": None}, "snapshot_id"),
    ],
)
def test_a_bad_ablation_is_a_422_naming_the_field_and_stores_nothing(
    client, db, teacher, tmp_path, monkeypatch, changes, field
):
    _tiny_model(tmp_path, monkeypatch)
    curator, first, more, _ = _two_snapshots(db)
    db.commit()
    body = {
        "snapshot_ids": [first] if changes.get("snapshot_ids") == "one" else [first, more],
        "base_model": "tiny-llama",
        "hyperparameters": TINY,
        "snapshot_id": first,
        "judge_teacher": "fake",
        **{k: v for k, v in changes.items() if k != "snapshot_ids"},
    }
    resp = client.post("/api/v1/ablations", json=body, headers=token_for(db, curator))
    assert resp.status_code == 422, resp.text
    assert field in resp.text
    assert db.scalar(select(func.count()).select_from(TrainingRun)) == 0
    assert db.scalar(select(func.count()).select_from(Evaluation)) == 0


def test_an_ablation_over_http_is_202_with_its_runs_and_paused_evaluation(
    client, db, teacher, tmp_path, monkeypatch
):
    _tiny_model(tmp_path, monkeypatch)
    curator, first, more, _ = _two_snapshots(db)
    db.commit()
    body = {
        "snapshot_ids": [first, more],
        "base_model": "tiny-llama",
        "hyperparameters": TINY,
        "snapshot_id": first,
        "judge_teacher": "fake",
        "include_base": False,
    }
    resp = client.post("/api/v1/ablations", json=body, headers=token_for(db, curator))
    assert resp.status_code == 202, resp.text
    out = resp.json()
    assert out["status"] == "paused" and len(out["training_run_ids"]) == 2
    detail = client.get(f"/api/v1/evaluations/{out['evaluation_id']}", headers=token_for(db, curator)).json()
    assert detail["status"] == "paused" and "waiting for its training runs" in detail["error"]
    assert [s["kind"] for s in detail["systems"]] == ["run", "run"]


def test_the_compare_snapshots_form_queues_an_ablation_and_names_a_bad_field(
    client, db, teacher, tmp_path, monkeypatch
):
    from tests.ui.test_pages import login

    _tiny_model(tmp_path, monkeypatch)
    curator, first, more, _ = _two_snapshots(db)
    from app.snapshots.models import Snapshot

    snap = db.get(Snapshot, more)
    assert snap is not None
    snap.name = '<img src=x onerror="window.__pwned=1">more'
    from app.datasets.models import Dataset

    dataset = db.get(Dataset, snap.dataset_id)
    assert dataset is not None
    db.commit()
    token = login(client, curator)
    listing = client.get(f"/ui/projects/{dataset.project_id}/evaluations").text
    assert 'data-role="compare-snapshots"' in listing
    page = client.get(f"/ui/projects/{dataset.project_id}/evaluations/ablation")
    assert page.status_code == 200
    assert "&lt;img src=x" in page.text and "<img src=x onerror" not in page.text
    data = {
        "csrf_token": token,
        "snapshot_ids": [str(first), str(more)],
        "base_model": "tiny-llama",
        "method": "lora",
        "hyperparameters": "{not json",
        "prompt_set": f"snapshot:{first}",
        "split": "all",
        "judge_teacher": "fake",
        "include_base": "on",
    }
    url = f"/ui/projects/{dataset.project_id}/evaluations/ablation"
    bad = client.post(url, data=data, follow_redirects=False)
    assert bad.status_code == 422 and 'data-field="hyperparameters"' in bad.text
    assert db.scalar(select(func.count()).select_from(TrainingRun)) == 0
    data["hyperparameters"] = '{"max_steps": 2}'
    ok = client.post(url, data=data, follow_redirects=False)
    assert ok.status_code == 303, ok.text
    evaluation = db.scalars(select(Evaluation)).one()
    assert ok.headers["location"].startswith(f"/ui/evaluations/{evaluation.id}")
    assert evaluation.params["ablation"]["snapshot_ids"] == [first, more]
    assert db.scalar(select(func.count()).select_from(TrainingRun)) == 2
