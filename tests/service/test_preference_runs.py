"""Preference training runs through the API: the objective is chosen per run, a snapshot without pairs is
refused naming snapshot_id, and the worker hands the trainer the snapshot's pairs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from app.config import get_settings
from app.training import jobs as training_jobs
from app.training.models import TrainingRun
from tests.factories import make_dataset, make_project, make_user, token_for
from tests.service.test_training_runs import _snapshot
from trainer.preference import load_preference_data


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.trainer.conftest import _save_model, _tokenizer

    root = tmp_path_factory.mktemp("models")
    _save_model(root / "tiny-llama", _tokenizer(None))
    return root


@pytest.fixture
def models_setting(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(get_settings(), "models_dir", models_dir)
    return models_dir


def _post(client: Any, h: dict[str, str], **body: Any) -> Any:
    return client.post("/api/v1/training-runs", json={"base_model": "tiny-llama", **body}, headers=h)


def test_a_preference_run_on_a_snapshot_without_pairs_is_a_422_naming_snapshot_id_and_stores_nothing(
    client,
    db,
    models_setting,
):
    curator, snap = _snapshot(db)  # accepted records, none edited or ranked: no pairs
    h = token_for(db, curator)
    runs_before = db.scalar(select(func.count()).select_from(TrainingRun))
    refused = _post(client, h, snapshot_id=snap.id, objective="dpo")
    assert refused.status_code == 422, refused.text
    assert refused.json()["field"] == "snapshot_id"
    assert "no preference pairs for objective=dpo" in refused.json()["detail"]
    unknown = _post(client, h, snapshot_id=snap.id, objective="ppo")
    assert unknown.status_code == 422 and "objective" in unknown.text
    twice = _post(client, h, snapshot_id=snap.id, hyperparameters={"objective": "dpo"})
    assert twice.status_code == 422 and "objective" in twice.json()["detail"]
    prefix = _post(client, h, snapshot_id=snap.id, objective="orpo", method="prefix")
    assert prefix.status_code == 422 and "not method=prefix" in prefix.json()["detail"]
    assert db.scalar(select(func.count()).select_from(TrainingRun)) == runs_before
    sft = _post(client, h, snapshot_id=snap.id)
    assert sft.status_code == 202 and sft.json()["config"]["objective"] == "sft"


def _binarized(question: str, good: str, bad: str) -> dict[str, Any]:
    user = {"role": "user", "content": question}
    return {
        "prompt": question,
        "chosen": [user, {"role": "assistant", "content": good}],
        "rejected": [user, {"role": "assistant", "content": bad}],
    }


def test_a_dpo_run_is_queued_with_its_knobs_and_the_worker_exports_the_snapshots_pairs(
    client,
    db,
    backend,
    models_setting,
    tmp_path: Path,
):
    curator = make_user(db, "curator")
    dataset = make_dataset(db, make_project(db, (curator, "curator")))
    h = token_for(db, curator)
    body = "".join(json.dumps(_binarized(f"Question {i}?", f"good {i}", f"bad {i}")) + "\n" for i in range(3))
    imported = client.post(f"/api/v1/datasets/{dataset.id}/import", content=body.encode(), headers=h)
    assert imported.status_code == 201, imported.text
    client.post(
        f"/api/v1/datasets/{dataset.id}/records/bulk-status",
        json={"filter": {}, "status": "accepted"},
        headers=h,
    )
    snap = client.post(f"/api/v1/datasets/{dataset.id}/snapshots", json={"name": "prefs"}, headers=h)
    assert snap.status_code == 201, snap.text

    queued = _post(client, h, snapshot_id=snap.json()["id"], objective="dpo", hyperparameters={"beta": 0.2})
    assert queued.status_code == 202, queued.text
    assert (queued.json()["config"]["objective"], queued.json()["config"]["beta"]) == ("dpo", 0.2)

    run = db.get(TrainingRun, queued.json()["id"])
    assert run is not None
    path = tmp_path / "dataset.jsonl"
    assert training_jobs._export(run, db, path) == 3
    data = load_preference_data(path)  # what the trainer will read
    assert sorted((p.prompt[-1]["content"], p.chosen, p.rejected) for p in data.pairs) == [
        (f"Question {i}?", f"good {i}", f"bad {i}") for i in range(3)
    ]
    assert not data.dropped
