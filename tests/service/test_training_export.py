"""A run's launch bundle (POST /training-runs/export): what a run would train, packed to start under Slurm or
Kubernetes, checked as a run is, never queued."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from app.audit.models import AuditLog
from app.config import get_settings
from app.training.models import TrainingRun
from tests.factories import token_for
from tests.service.test_training_continue import _earlier
from tests.service.test_training_runs import _snapshot

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.trainer.conftest import _save_model, _tokenizer

    root = tmp_path_factory.mktemp("models")
    _save_model(root / "tiny-llama", _tokenizer(None))
    return root


def _unpack(content: bytes, dest: Path) -> Path:
    with tarfile.open(fileobj=io.BytesIO(content), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")
    return dest / "instructforge-run"


def test_a_multi_node_bundle_unpacks_to_a_config_the_trainer_loads_with_the_snapshots_records_and_a_torchrun_launch(
    client, db, tiny_models, tmp_path, monkeypatch
):
    from trainer.config import TrainConfig
    from trainer.data import load_dataset

    monkeypatch.setattr(get_settings(), "models_dir", tiny_models)
    monkeypatch.setattr(
        get_settings(), "gpus_per_worker", 1
    )  # the cluster's GPUs, not the workers', count here
    curator, snap = _snapshot(db, n=6)
    reply = client.post(
        "/api/v1/training-runs/export",
        json={
            "snapshot_id": snap.id,
            "base_model": "tiny-llama",
            "gpus": 4,
            "nodes": 2,
            "hyperparameters": {"parallelism": "fsdp", "lr": 1e-4},
        },
        headers=token_for(db, curator),
    )
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/gzip"
    assert db.scalar(select(func.count()).select_from(TrainingRun)) == 0  # exported, not queued
    audited = db.scalars(select(AuditLog.detail).where(AuditLog.action == "training.export")).all()
    assert [(d["gpus"], d["nodes"]) for d in audited] == [(4, 2)]  # snapshot data left the server: on record

    folder = _unpack(reply.content, tmp_path)
    assert {p.name for p in folder.iterdir()} == {
        "train_config.yaml",
        "dataset.jsonl",
        "launch.sh",
        "README.txt",
    }
    monkeypatch.chdir(
        folder
    )  # launch.sh runs the trainer from the folder: the config's paths are relative to it
    config = TrainConfig.from_file("train_config.yaml")
    assert (config.nodes, config.gpus, config.parallelism, config.lr) == (2, 4, "fsdp", 1e-4)
    assert (config.dataset_path, config.output_dir, config.models_dir) == (
        "dataset.jsonl",
        "output",
        "models",
    )
    data = load_dataset(config.dataset_path)
    questions = sorted(m["content"] for conv in data.conversations for m in conv if m["role"] == "user")
    assert len(questions) == 6 and "Name a primary colour." in questions
    (folder / "models").symlink_to(tiny_models)  # the base model beside the config, as README.txt says
    assert config.resolved_base_model() == (tiny_models / "tiny-llama").resolve()

    launch = (folder / "launch.sh").read_text()
    assert "-m torch.distributed.run --nnodes=2 --nproc-per-node=4" in launch
    assert '--rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT"' in launch
    assert launch.rstrip().endswith("-m trainer train_config.yaml")
    assert os.stat(folder / "launch.sh").st_mode & 0o111  # executable as unpacked
    assert "2 node(s) x 4 GPU(s)" in (folder / "README.txt").read_text()


def test_malformed_or_refused_export_bodies_are_422s_naming_the_field(client, db, tiny_models, monkeypatch):
    monkeypatch.setattr(get_settings(), "models_dir", tiny_models)
    curator, snap = _snapshot(db, n=2)
    h = token_for(db, curator)

    def post(**body):
        return client.post("/api/v1/training-runs/export", json=body, headers=h)

    ok = {"snapshot_id": snap.id, "base_model": "tiny-llama"}
    cases = {
        "snapshot_id": post(base_model="tiny-llama"),
        "gpus": post(**ok, gpus="two"),
        "nodes": post(**ok, nodes=0),
        "base_model": post(snapshot_id=snap.id, base_model="../etc"),
        "hyperparameters.lr": post(**ok, hyperparameters={"lr": "fast"}),
        "hyperparameters may not set dataset_path": post(
            **ok, hyperparameters={"dataset_path": "/etc/passwd"}
        ),
        "method": post(**ok, method="magic"),
        "objective=dpo runs on one GPU": post(**ok, objective="dpo", gpus=2),
    }
    for field, reply in cases.items():
        assert reply.status_code == 422 and field in reply.text, (field, reply.text)
    garbled = client.post(
        "/api/v1/training-runs/export",
        content=b"{not json",
        headers={**h, "content-type": "application/json"},
    )
    assert garbled.status_code == 422
    other = client.post("/api/v1/training-runs/export", json={**ok, "snapshot_id": snap.id + 999}, headers=h)
    assert other.status_code == 404

    single = post(**ok, hyperparameters={"max_steps": 1, "batch_size": 2, "max_seq_len": 64, "eval_steps": 0})
    assert single.status_code == 200, single.text
    assert b'exec "$PYTHON" -m trainer train_config.yaml' in _launch_of(single.content)


class _InProcess(httpx.BaseTransport):
    """The in-process app (TestClient's transport) under an httpx.Client of its own: the body read whole."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        reply = self.inner.handle_request(request)
        return httpx.Response(reply.status_code, headers=reply.headers, content=reply.read())


def test_the_python_client_downloads_a_bundle_and_raises_the_apis_refusal(
    client, db, tiny_models, tmp_path, monkeypatch
):
    from instructforge.client import Client, InvalidRequest

    monkeypatch.setattr(get_settings(), "models_dir", tiny_models)
    curator, snap = _snapshot(db, n=2)
    token = token_for(db, curator)["Authorization"].removeprefix("Bearer ")
    forge = Client("http://testserver", token, transport=_InProcess(client._transport))
    path = forge.export_training_bundle(snap.id, "tiny-llama", tmp_path, gpus=8, nodes=4)
    assert path.parent == tmp_path and path.name.endswith(".tar.gz") and not list(tmp_path.glob("*.part"))
    assert b"--nnodes=4 --nproc-per-node=8" in _launch_of(path.read_bytes())
    earlier = _earlier(db, snap_project(db, snap), tmp_path / "earlier")
    for name in (
        "prompt_format.json",
        "tokenizer_config.json",
    ):  # the earlier run's tokens, beside its adapter
        (tmp_path / "earlier" / name).write_text("{}")
    continued = forge.export_training_bundle(
        snap.id, "tiny-llama", tmp_path / "c.tar.gz", continue_from=earlier.id
    )
    with tarfile.open(continued) as tar:
        names = set(tar.getnames())
        member = tar.extractfile("instructforge-run/train_config.yaml")
        assert member is not None and "init_adapter: init_run/adapter\n" in member.read().decode()
    run_files = {"adapter/adapter_config.json", "prompt_format.json", "tokenizer_config.json"}
    assert {f"instructforge-run/init_run/{name}" for name in run_files} <= names
    assert (
        "instructforge-run/init_run/dataset.jsonl" not in names
    )  # the earlier run's data stays on the server
    with pytest.raises(InvalidRequest) as refused:
        forge.export_training_bundle(snap.id, "tiny-llama", tmp_path, hyperparameters={"output_dir": "/"})
    assert "output_dir" in refused.value.message


def snap_project(db, snap) -> int:
    from app.datasets.models import Dataset

    return db.get_one(Dataset, snap.dataset_id).project_id


def _launch_of(content: bytes) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(content), mode="r:gz") as tar:
        member = tar.extractfile("instructforge-run/launch.sh")
        assert member is not None
        return member.read()


def test_the_training_forms_gpus_field_shows_the_workers_gpus_and_a_too_large_count_shows_the_apis_refusal(
    client, db, tiny_models, browser_page, monkeypatch
):
    from tests.conftest import serve_from
    from tests.ui.test_pages import login

    monkeypatch.setattr(get_settings(), "models_dir", tiny_models)
    monkeypatch.setattr(get_settings(), "gpus_per_worker", 2)
    curator, snap = _snapshot(db, n=2)
    login(client, curator)
    serve_from(client, browser_page)
    browser_page.goto("http://testserver/ui/training")
    assert browser_page.input_value('[data-role="gpus"]') == "1"
    assert "a gpu worker here has 2 GPUs" in browser_page.inner_text('[data-role="gpus-hint"]')
    browser_page.select_option("select[name=snapshot_id]", str(snap.id))
    browser_page.fill('[data-role="gpus"]', "3")
    browser_page.click("#train-form button[type=submit]")
    error = browser_page.locator('#train-form [data-role="error"]')
    error.filter(has_text="gpus: 3 asked for").wait_for()
    assert "has 2 (IF_GPUS_PER_WORKER)" in error.inner_text()
    assert db.scalar(select(func.count()).select_from(TrainingRun)) == 0
