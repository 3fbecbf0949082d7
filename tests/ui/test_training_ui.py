"""The training pages in a real browser: the form offers the models found (and says why others are refused), and
a run's page shows the sample generations the trainer wrote, escaped. Set IF_UI_SCREENSHOTS=docs/screenshots to
refresh docs/screenshots/training_run.png."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from app.config import get_settings
from app.jobs.models import Job
from app.records.schemas import RecordFilter
from app.snapshots import service as snapshots
from app.training.models import TrainingMetric, TrainingRun
from tests.conftest import serve_from
from tests.factories import make_dataset, make_project, make_records, make_user
from tests.model_folders import REFUSED, USABLE, build_models_dir
from tests.ui.test_pages import login

pytest.importorskip("torch")
pytest.importorskip("peft")
pytestmark = pytest.mark.browser

SHOTS = os.environ.get("IF_UI_SCREENSHOTS")
XSS = "<img src=x onerror=\"window.__xss = 'sample'\">"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_models_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def trained(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run of the trainer on the tiny chat model: its artifacts folder, samples.jsonl included."""
    from tests.trainer.conftest import seed_task_records
    from trainer.config import TrainConfig
    from trainer.run import main as train

    work = tmp_path_factory.mktemp("trained")
    short = [r for r in seed_task_records() if len(r["instruction"]) + len(r["input"]) < 120][:24]
    (work / "data.json").write_text(json.dumps(short), encoding="utf-8")
    config = TrainConfig(
        base_model=str(models_dir / "tiny-llama-chat"),
        dataset_path=str(work / "data.json"),
        output_dir=str(work / "run"),
        max_seq_len=256,
        batch_size=4,
        grad_accum=1,
        max_steps=12,
        lr=3e-3,
        warmup_ratio=0.0,
        val_fraction=0.15,
        logging_steps=2,
        eval_steps=6,
        save_steps=0,
        sample_prompts=3,
        sample_max_new_tokens=24,
        gradient_checkpointing=False,
    )
    assert train(config).state == "succeeded"
    return work / "run"


def _run_row(db: Session, curator: Any, artifacts: Path) -> TrainingRun:
    """The rows the train job leaves for a finished run whose files are in `artifacts`."""
    project = make_project(db, (curator, "curator"))
    dataset = make_dataset(db, project)
    make_records(db, dataset, 2, status="accepted")
    snap = snapshots.create_snapshot(
        db=db,
        user=curator,
        dataset_id=dataset.id,
        name="s",
        description="",
        flt=RecordFilter(status=["accepted"]),
    )
    metrics = [json.loads(x) for x in (artifacts / "metrics.jsonl").read_text().splitlines()]
    steps = metrics[-1]["step"]
    job = Job(project_id=project.id, kind="train", queue="gpu", params={}, status="succeeded")
    job.progress_done = job.progress_total = steps
    db.add(job)
    db.flush()
    run = TrainingRun(
        project_id=project.id,
        snapshot_id=snap.id,
        job_id=job.id,
        base_model="tiny-llama-chat",
        method="lora",
        config={"max_steps": steps, "lr": 3e-3},
        artifacts_dir=str(artifacts),
        summary=json.loads((artifacts / "summary.json").read_text()),
    )
    db.add(run)
    db.flush()
    for m in metrics:
        db.add(TrainingMetric(run_id=run.id, step=m["step"], values=m, loss=m.get("loss")))
    db.flush()
    return run


def test_the_run_page_shows_the_samples_the_trainer_wrote_by_step(
    client: Any, db: Session, browser_page: Any, trained: Path
):
    curator = make_user(db, "curator")
    run = _run_row(db, curator, trained)
    written = [json.loads(x) for x in (trained / "samples.jsonl").read_text().splitlines()]
    login(client, curator)
    serve_from(client, browser_page)
    browser_page.goto(f"http://testserver/ui/training/{run.id}")
    browser_page.wait_for_selector('[data-role="sample"]')
    rows = browser_page.locator('[data-role="sample"]')
    assert rows.count() == len(written) == 3
    assert browser_page.locator('[data-role="samples"] h4').all_inner_texts() == [
        f"Step {written[0]['step']}"
    ]
    for i, sample in enumerate(written):
        cells = rows.nth(i).locator("td").all_inner_texts()
        assert sample["prompt"][-1]["content"] in cells[0] and cells[0].startswith("user: ")
        assert cells[1] == (sample["generation"] or "(empty)") and cells[2] == sample["reference"]
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        browser_page.wait_for_selector('[data-role="chart"] path')
        browser_page.screenshot(path=str(Path(SHOTS) / "training_run.png"), full_page=True)


def test_sample_text_is_shown_as_text_never_run_as_html(
    client: Any, db: Session, browser_page: Any, trained: Path, tmp_path: Path
):
    # the trainer's own file with untrusted text where prompts (uploads) and generations (a model) put it
    lines = [json.loads(x) for x in (trained / "samples.jsonl").read_text().splitlines()]
    for line in lines:
        line["prompt"][-1]["content"] += XSS
        line["generation"], line["reference"] = XSS, XSS
    artifacts = tmp_path / "run"
    artifacts.mkdir()
    for name in ("metrics.jsonl", "summary.json"):
        (artifacts / name).write_text((trained / name).read_text())
    (artifacts / "samples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    curator = make_user(db, "curator")
    run = _run_row(db, curator, artifacts)
    login(client, curator)
    serve_from(client, browser_page)
    browser_page.goto(f"http://testserver/ui/training/{run.id}")
    browser_page.wait_for_selector('[data-role="sample"]')
    assert browser_page.locator('[data-role="generation"]').first.inner_text() == XSS
    assert browser_page.evaluate("window.__xss") is None
    assert browser_page.locator('[data-role="samples"] img').count() == 0


def test_annotators_are_told_samples_are_for_curators(
    client: Any, db: Session, browser_page: Any, trained: Path
):
    curator, annotator = make_user(db, "curator"), make_user(db, "annotator")
    run = _run_row(db, curator, trained)
    from app.projects.models import ProjectMember

    db.add(ProjectMember(project_id=run.project_id, user_id=annotator.id, role="annotator"))
    db.flush()
    login(client, annotator)
    serve_from(client, browser_page)
    browser_page.goto(f"http://testserver/ui/training/{run.id}")
    note = browser_page.locator('[data-role="samples"] p', has_text="curators")
    note.wait_for()
    assert "shown to the project's curators and admins" in note.inner_text()
    assert browser_page.locator('[data-role="sample"]').count() == 0


def test_the_training_form_offers_the_models_found_and_says_why_others_are_refused(
    client: Any, db: Session, browser_page: Any, models_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(get_settings(), "models_dir", models_dir)
    curator = make_user(db, "curator")
    dataset = make_dataset(db, make_project(db, (curator, "curator")))
    make_records(db, dataset, 4, status="accepted")
    snap = snapshots.create_snapshot(
        db=db,
        user=curator,
        dataset_id=dataset.id,
        name="s",
        description="",
        flt=RecordFilter(status=["accepted"]),
    )
    login(client, curator)
    serve_from(client, browser_page)
    browser_page.goto("http://testserver/ui/training")
    options = browser_page.locator('[data-role="base-model"] option')
    enabled = browser_page.locator('[data-role="base-model"] option:not([disabled])')
    assert [enabled.nth(i).get_attribute("value") for i in range(enabled.count())] == list(USABLE)
    assert "no chat template: alpaca for single-turn records" in enabled.first.inner_text()
    assert "llama, 0.2M parameters, chat template" in enabled.nth(1).inner_text()
    refused = {o.split(" — ")[0]: o for o in options.all_inner_texts()[len(USABLE) :]}
    assert set(refused) == set(REFUSED)
    for name, words in REFUSED.items():
        assert "refused: " in refused[name] and words in refused[name]
    browser_page.click('[data-role="refused-models"] summary')
    assert "missing tokenizer" in browser_page.locator('[data-role="refused-models"] table').inner_text()
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        browser_page.locator("#train-form").screenshot(path=str(Path(SHOTS) / "training_form.png"))
    browser_page.select_option('[data-role="base-model"]', "tiny-llama-chat")
    browser_page.select_option("select[name=snapshot_id]", str(snap.id))
    browser_page.fill("textarea[name=hyperparameters]", '{"max_steps": 2}')
    browser_page.click("#train-form button[type=submit]")
    browser_page.wait_for_url("**/ui/training/*")
    run_id = int(browser_page.url.rsplit("/", 1)[1])
    run = db.get(TrainingRun, run_id)
    assert run is not None and run.base_model == "tiny-llama-chat" and run.config["max_steps"] == 2
