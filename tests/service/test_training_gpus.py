"""A run's GPUs: refused at creation beyond what a gpu worker has, stored in its config, launched with torchrun."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from app.config import get_settings
from app.training.jobs import trainer_command
from tests.factories import token_for
from tests.service.test_training_runs import _snapshot

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.trainer.conftest import _save_model, _tokenizer

    root = tmp_path_factory.mktemp("models")
    _save_model(root / "tiny-llama", _tokenizer(None))
    return root


def test_runs_asking_for_more_gpus_than_a_worker_has_or_several_nodes_are_refused_naming_the_field(
    client,
    db,
    tiny_models,
    monkeypatch,
):
    monkeypatch.setattr(get_settings(), "models_dir", tiny_models)
    monkeypatch.setattr(get_settings(), "gpus_per_worker", 2)
    curator, snap = _snapshot(db)
    h = token_for(db, curator)

    def post(**body):
        return client.post(
            "/api/v1/training-runs",
            json={"snapshot_id": snap.id, "base_model": "tiny-llama", **body},
            headers=h,
        )

    too_many = post(gpus=4)
    assert too_many.status_code == 422 and too_many.json()["detail"].startswith("gpus: 4 asked for")
    assert "has 2 (IF_GPUS_PER_WORKER)" in too_many.json()["detail"]
    nodes = post(nodes=2)
    assert nodes.status_code == 422 and nodes.json()["detail"].startswith("nodes:")
    for bad in ({"gpus": 0}, {"gpus": "two"}, {"nodes": -1}):
        reply = post(**bad)
        assert reply.status_code == 422 and next(iter(bad)) in reply.text
    smuggled = post(hyperparameters={"gpus": 8})
    assert smuggled.status_code == 422 and "gpus" in smuggled.json()["detail"]

    ok = post(gpus=2, hyperparameters={"parallelism": "fsdp"})
    assert ok.status_code == 202, ok.text
    config = ok.json()["config"]
    assert (config["gpus"], config["nodes"], config["parallelism"]) == (2, 1, "fsdp")


def test_a_run_on_several_gpus_is_launched_with_torchrun_one_rank_per_gpu():
    path = Path("/runs/run-1/job_config.yaml")
    assert trainer_command(path, gpus=1) == [sys.executable, "-m", "trainer", str(path)]
    assert trainer_command(path, gpus=4) == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=4",
        "-m",
        "trainer",
        str(path),
    ]
