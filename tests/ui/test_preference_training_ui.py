"""Preference training in the browser: the form sends the objective (a snapshot without pairs is refused with
the API's words), and a run page plots rewards, margin and preference accuracy only when the run logged them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from app.config import get_settings
from app.records.schemas import RecordFilter
from app.snapshots import service as snapshots
from tests.conftest import serve_from
from tests.factories import make_dataset, make_project, make_records, make_user
from tests.ui.test_pages import login
from tests.ui.test_training_ui import _run_row

pytestmark = pytest.mark.browser


def _artifacts(root: Path, rows: list[dict[str, Any]]) -> Path:
    root.mkdir()
    (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (root / "summary.json").write_text(json.dumps({"state": "succeeded"}), encoding="utf-8")
    return root


def _dpo_rows() -> list[dict[str, Any]]:
    """Metrics lines as trainer/preference.py writes them (the numbers of a real 20-step run, rounded)."""
    values = [
        (0.61, 0.21, -0.18, 0.35),
        (0.23, 0.88, -0.81, 1.0),
        (0.08, 1.32, -1.5, 1.0),
        (0.03, 1.77, -1.77, 1.0),
    ]
    return [
        {
            "step": 5 * (i + 1),
            "loss": loss,
            "rewards/chosen": chosen,
            "rewards/rejected": rejected,
            "rewards/margins": chosen - rejected,
            "rewards/accuracies": acc,
        }
        for i, (loss, chosen, rejected, acc) in enumerate(values)
    ]


def test_a_preference_run_page_plots_rewards_margin_and_accuracy_and_an_sft_page_does_not(
    client: Any, db: Session, browser_page: Any, tmp_path: Path
):
    curator = make_user(db, "curator")
    dpo = _run_row(db, curator, _artifacts(tmp_path / "dpo", _dpo_rows()))
    sft = _run_row(
        db, curator, _artifacts(tmp_path / "sft", [{"step": s, "loss": 2.0 / s} for s in (1, 2, 3)])
    )
    login(client, curator)
    serve_from(client, browser_page)

    browser_page.goto(f"http://testserver/ui/training/{dpo.id}")
    browser_page.wait_for_selector('[data-role="rewards-chart"] path')
    assert browser_page.locator('[data-role="preference"]').is_visible()
    rewards = browser_page.locator('[data-role="rewards-chart"] text[data-key]').all_text_contents()
    assert rewards == ["chosen 1.7700", "rejected -1.7700", "margin 3.5400"]
    assert browser_page.locator('[data-role="rewards-chart"] path').count() == 3
    assert browser_page.locator('[data-role="accuracy-chart"] text[data-key]').all_text_contents() == [
        "accuracy 1.0000"
    ]

    browser_page.goto(f"http://testserver/ui/training/{sft.id}")
    browser_page.wait_for_selector('[data-role="chart"] path')
    assert browser_page.locator('[data-role="preference"]').is_hidden()


def test_the_form_sends_the_objective_and_shows_why_a_snapshot_without_pairs_is_refused(
    client: Any, db: Session, browser_page: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from tests.trainer.conftest import _save_model, _tokenizer

    _save_model(tmp_path / "models" / "tiny-llama", _tokenizer(None))
    monkeypatch.setattr(get_settings(), "models_dir", tmp_path / "models")
    curator = make_user(db, "curator")
    dataset = make_dataset(db, make_project(db, (curator, "curator")))
    make_records(db, dataset, 3, status="accepted")
    snapshots.create_snapshot(
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
    assert browser_page.locator('[data-role="objective"] option').all_inner_texts() == [
        "sft",
        "dpo",
        "orpo",
        "kto",
        "simpo",
    ]
    browser_page.select_option('[data-role="objective"]', "dpo")
    browser_page.click('#train-form button[type="submit"]')
    error = browser_page.locator('#train-form [data-role="error"]')
    error.wait_for(state="visible")
    browser_page.wait_for_function(
        "document.querySelector('#train-form [data-role=\"error\"]').textContent.length > 0"
    )
    assert "no preference pairs for objective=dpo" in error.inner_text()
