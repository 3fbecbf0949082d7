"""POST /training-runs with continue_from (issue 20): a run continues an earlier run's adapter, refused with a
422 naming continue_from for anything it cannot continue, and the lineage shows which run it continued."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.audit.models import AuditLog
from app.config import get_settings
from app.jobs.models import Job
from app.training.models import TrainingRun
from tests.api.test_visibility import make_run
from tests.factories import make_project, token_for
from tests.service.test_training_runs import _snapshot

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.trainer.conftest import _save_model, _tokenizer

    root = tmp_path_factory.mktemp("models")
    _save_model(root / "tiny-llama", _tokenizer(None))
    return root


def _earlier(db, project_id: int, folder: Path, *, method: str = "lora", adapter: bool = True) -> TrainingRun:
    """A finished run on tiny-llama whose folder holds an adapter (the files are not read by the service)."""
    run = make_run(db, project_id, folder)
    run.base_model, run.method = "tiny-llama", method
    if adapter:
        (folder / "adapter").mkdir()
        (folder / "adapter" / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    db.flush()
    return run


def test_continue_from_is_refused_naming_it_for_every_run_that_cannot_be_continued(
    client, db, tiny_models, monkeypatch, tmp_path
):
    monkeypatch.setattr(get_settings(), "models_dir", tiny_models)
    curator, snap = _snapshot(db)
    h = token_for(db, curator)
    from app.datasets.models import Dataset

    project = db.get_one(Dataset, snap.dataset_id).project_id
    other_project = make_project(db, (curator, "curator")).id

    failed = _earlier(db, project, tmp_path / "failed")
    db.get_one(Job, failed.job_id).status = "failed"
    other_base = _earlier(db, project, tmp_path / "other-base")
    other_base.base_model = "another-model"
    cases = {
        999_999: "no training run 999999 in this project",
        _earlier(db, other_project, tmp_path / "elsewhere").id: "in this project",
        failed.id: "is failed; only a succeeded run has an adapter",
        other_base.id: "was trained on base_model 'another-model', not 'tiny-llama'",
        _earlier(db, project, tmp_path / "bare", adapter=False).id: "has no adapter on this server",
        _earlier(db, project, tmp_path / "full", method="full").id: "method=full, which leaves no adapter",
        _earlier(db, project, tmp_path / "ia3", method="ia3").id: "trained a ia3 adapter; method=lora cannot",
    }
    db.flush()
    before = db.scalar(select(func.count()).select_from(TrainingRun))
    for run_id, words in cases.items():
        reply = client.post(
            "/api/v1/training-runs",
            json={"snapshot_id": snap.id, "base_model": "tiny-llama", "continue_from": run_id},
            headers=h,
        )
        assert reply.status_code == 422, (run_id, reply.text)
        assert reply.json()["detail"].startswith("continue_from: ") and words in reply.json()["detail"]
    for bad in (0, "two", -3):
        reply = client.post(
            "/api/v1/training-runs",
            json={"snapshot_id": snap.id, "base_model": "tiny-llama", "continue_from": bad},
            headers=h,
        )
        assert reply.status_code == 422 and "continue_from" in reply.text
    # the adapter path is the server's to set: a caller cannot point the trainer at a folder of its own
    smuggled = client.post(
        "/api/v1/training-runs",
        json={
            "snapshot_id": snap.id,
            "base_model": "tiny-llama",
            "hyperparameters": {"init_adapter": "/etc"},
        },
        headers=h,
    )
    assert smuggled.status_code == 422 and "init_adapter" in smuggled.json()["detail"]
    assert db.scalar(select(func.count()).select_from(TrainingRun)) == before


def test_a_run_continuing_an_earlier_one_trains_its_adapter_and_shows_it_in_its_lineage(
    client, db, tiny_models, monkeypatch, tmp_path
):
    monkeypatch.setattr(get_settings(), "models_dir", tiny_models)
    curator, snap = _snapshot(db)
    h = token_for(db, curator)
    from app.datasets.models import Dataset

    earlier = _earlier(db, db.get_one(Dataset, snap.dataset_id).project_id, tmp_path / "broad")
    db.flush()

    reply = client.post(
        "/api/v1/training-runs",
        json={
            "snapshot_id": snap.id,
            "base_model": "tiny-llama",
            "method": "dora",
            "continue_from": earlier.id,
        },
        headers=h,
    )
    assert reply.status_code == 422 and "trained a lora adapter; method=dora" in reply.json()["detail"]

    reply = client.post(
        "/api/v1/training-runs",
        json={
            "snapshot_id": snap.id,
            "base_model": "tiny-llama",
            "method": "qlora",
            "continue_from": earlier.id,
        },
        headers=h,
    )
    assert reply.status_code == 202, reply.text
    created = reply.json()
    assert created["continued_from"] == earlier.id
    assert created["config"]["init_adapter"] == str(tmp_path / "broad" / "adapter")

    shown = client.get(f"/api/v1/training-runs/{created['id']}", headers=h).json()
    assert shown["continued_from"] == earlier.id
    listed = client.get("/api/v1/training-runs", headers=h).json()
    assert {r["id"]: r["continued_from"] for r in listed}[created["id"]] == earlier.id
    assert {r["id"]: r["continued_from"] for r in listed}[earlier.id] is None
    audit = db.scalars(select(AuditLog).where(AuditLog.action == "training.create")).all()
    assert [a.detail["continue_from"] for a in audit if a.entity_id == str(created["id"])] == [earlier.id]


@pytest.mark.browser
def test_the_run_page_says_which_run_it_continued(client, db, browser_page, tmp_path):
    from tests.conftest import serve_from
    from tests.factories import make_user
    from tests.ui.test_pages import login

    curator = make_user(db, "curator")
    project = make_project(db, (curator, "curator")).id
    earlier = _earlier(db, project, tmp_path / "broad")
    later = make_run(db, project, tmp_path / "domain")
    later.config = {"init_adapter": str(tmp_path / "broad" / "adapter")}
    db.flush()

    login(client, curator)
    serve_from(client, browser_page)
    browser_page.goto(f"http://testserver/ui/training/{later.id}")
    info = browser_page.locator('[data-role="info"]')
    info.locator("dt", has_text="continued from").wait_for()
    assert f"run #{earlier.id}" in info.inner_text()
    browser_page.goto(f"http://testserver/ui/training/{earlier.id}")
    browser_page.locator('[data-role="info"] dt', has_text="base model").wait_for()
    assert "continued from" not in browser_page.locator('[data-role="info"]').inner_text()


def test_trust_remote_code_needs_an_admin_setting_and_chat_templates_are_text_checked_before_queueing(
    client, db, tiny_models, monkeypatch
):
    monkeypatch.setattr(get_settings(), "models_dir", tiny_models)
    curator, snap = _snapshot(db)
    h = token_for(db, curator)

    def post(hyper):
        return client.post(
            "/api/v1/training-runs",
            json={"snapshot_id": snap.id, "base_model": "tiny-llama", "hyperparameters": hyper},
            headers=h,
        )

    before = db.scalar(select(func.count()).select_from(TrainingRun))
    for remote in (True, "true", 1):
        off = post({"trust_remote_code": remote})
        assert off.status_code == 422 and off.json()["detail"].startswith(
            "hyperparameters.trust_remote_code:"
        )
    path = post({"chat_template": "/etc/passwd"})
    assert path.status_code == 422 and "file paths are not read here" in path.json()["detail"]
    broken = post({"chat_template": "{% for m in messages %}{{ m['content'] }}"})
    assert broken.status_code == 422 and "chat_template does not compile" in broken.json()["detail"]
    assert db.scalar(select(func.count()).select_from(TrainingRun)) == before

    monkeypatch.setattr(get_settings(), "allow_trust_remote_code", True)
    on = post({"trust_remote_code": True, "prompt_format": "zephyr"})
    assert on.status_code == 202, on.text
    assert on.json()["config"]["trust_remote_code"] is True
