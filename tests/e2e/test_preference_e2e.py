"""Preference data end to end through the API: a respond job answers real prompts with two candidates each,
a judge ranks them, an annotator chooses between them pairwise, a snapshot freezes the pairs, an SFT run
and a DPO run on its adapter train on it, and an evaluation compares SFT with SFT+DPO.

Jobs run in this process with the workers' own runner (workers.runner.run_job: the gpu worker's code path,
the trainer and the generator as child processes). It runs in `make test` (and `make e2e`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from app.config import get_settings
from app.projects.models import ProjectMember
from app.training.models import TrainingRun
from tests.factories import job_row, make_dataset, make_project, make_user, token_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
torch = pytest.importorskip("torch")

FAST = {
    "batch_size": 4,
    "grad_accum": 1,
    "logging_steps": 1,
    "eval_steps": 0,
    "val_fraction": 0.0,
    "sample_prompts": 0,
    "gradient_checkpointing": False,
    "max_seq_len": 128,
}


def _run(engine: Any, job_id: int) -> None:
    from workers.runner import run_job

    assert run_job(job_id) == "succeeded", job_row(engine, job_id).error


@pytest.mark.parametrize("backend", ["postgresql"])
def test_respond_judge_pairwise_review_snapshot_dpo_and_an_evaluation_of_sft_against_sft_plus_dpo(
    committed: Any, teacher: Any, shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.trainer.conftest import _save_model, _tokenizer

    models = tmp_path / "models"
    _save_model(models / "tiny-llama", _tokenizer(None))
    monkeypatch.setattr(get_settings(), "models_dir", models)
    with Session(committed) as db:
        curator = make_user(db, "curator")
        annotator = make_user(db, "annotator")
        project = make_project(db, (curator, "curator"))
        db.add(ProjectMember(project_id=project.id, user_id=annotator.id, role="annotator"))
        dataset = make_dataset(db, project)
        db.commit()
        dataset_id = dataset.id
        cur, ann = token_for(db, curator), token_for(db, annotator)
        db.commit()
    rows = json.loads((shared_data / "codealpaca" / "code_alpaca_2k.json").read_text(encoding="utf-8"))
    rows = [r for r in rows if r["output"].strip() and len(r["output"]) < 200][:12]

    with TestClient(create_app()) as api:

        def call(method: str, path: str, h: dict[str, str], **kw: Any) -> Any:
            resp = api.request(method, f"/api/v1{path}", headers=h, **kw)
            assert resp.status_code < 300, (path, resp.status_code, resp.text)
            return resp.json()

        call("POST", f"/datasets/{dataset_id}/import", cur, content=json.dumps(rows).encode())
        call(
            "POST",
            f"/datasets/{dataset_id}/records/bulk-status",
            cur,
            json={"filter": {}, "status": "accepted"},
        )
        records = call("GET", f"/datasets/{dataset_id}/records", cur, params={"limit": 50})["items"]
        assert len(records) == 12

        # 1. Two candidates per prompt from the teacher, then the judge ranks them.
        respond = call(
            "POST",
            "/jobs",
            cur,
            json={"kind": "respond", "dataset_id": dataset_id, "params": {"teacher": "fake", "n": 2}},
        )
        _run(committed, respond["id"])
        rank = call(
            "POST",
            "/jobs",
            cur,
            json={
                "kind": "rank_candidates",
                "dataset_id": dataset_id,
                "params": {"teacher": "fake", "include_original": False},
            },
        )
        _run(committed, rank["id"])

        # 2. The annotator chooses, pairwise, the candidate the judge scored higher (or the first on a tie).
        chosen = 0
        for r in records:
            seen = call("GET", f"/records/{r['id']}/candidates", ann)
            a, b = [c["id"] for c in seen["candidates"]][:2]
            machine = [j for j in seen["judgments"] if j["source"] == "judge" and j["kind"] == "pairwise"]
            assert machine and machine[0]["rationale"]  # the judge's verdict, with its reasons
            verdict = machine[0]
            winner = verdict["candidate_ids"][1] if verdict["choice"] == "b" else verdict["candidate_ids"][0]
            choice = "a" if winner == a else "b"
            call(
                "POST",
                f"/records/{r['id']}/judgments/pairwise",
                ann,
                json={"a_id": a, "b_id": b, "choice": choice},
            )
            chosen += 1
            after = call("GET", f"/records/{r['id']}/candidates", ann)["judgments"]
            assert {j["source"] for j in after} >= {"person", "judge"}  # the judge's verdict stays beside
        assert chosen == 12

        # 3. The snapshot freezes the pairs; its DPO export has one pair per record, the person's choice.
        snap = call("POST", f"/datasets/{dataset_id}/snapshots", cur, json={"name": "prefs"})
        dpo = api.get(f"/api/v1/snapshots/{snap['id']}/export", params={"format": "dpo"}, headers=cur)
        assert dpo.status_code == 200, dpo.text
        assert len(dpo.content.decode().splitlines()) == 12

        # 4. SFT on the records, then DPO on the pairs starting from the SFT adapter.
        sft = call(
            "POST",
            "/training-runs",
            cur,
            json={
                "snapshot_id": snap["id"],
                "base_model": "tiny-llama",
                "hyperparameters": {**FAST, "max_steps": 6},
            },
        )
        _run(committed, sft["job_id"])
        dpo_run = call(
            "POST",
            "/training-runs",
            cur,
            json={
                "snapshot_id": snap["id"],
                "base_model": "tiny-llama",
                "objective": "dpo",
                "continue_from": sft["id"],  # the SFT adapter is the start and the reference
                "hyperparameters": {**FAST, "max_steps": 6},
            },
        )
        with Session(committed) as db:
            dpo_row = db.get(TrainingRun, dpo_run["id"])
            sft_row = db.get(TrainingRun, sft["id"])
            assert dpo_row is not None and sft_row is not None
            assert dpo_row.config["init_adapter"] == str(Path(sft_row.artifacts_dir) / "adapter")
        assert call("GET", f"/training-runs/{dpo_run['id']}", cur)["continued_from"] == sft["id"]
        _run(committed, dpo_run["job_id"])
        metrics = call("GET", f"/training-runs/{dpo_run['id']}", cur)["metrics"]
        assert metrics and any("margin" in " ".join(m["values"]) for m in metrics)

        # 5. An evaluation of SFT against SFT+DPO on the same prompts, judged in both orders.
        ev = call(
            "POST",
            "/evaluations",
            cur,
            json={
                "name": "sft vs sft+dpo",
                "snapshot_id": snap["id"],
                "systems": [
                    {"kind": "run", "training_run_id": dpo_run["id"], "name": "sft+dpo"},
                    {"kind": "run", "training_run_id": sft["id"], "name": "sft"},
                ],
                "judge_teacher": "fake",
                "max_prompts": 6,
                "generation": {"max_new_tokens": 8, "batch_size": 4},
            },
        )
        _run(committed, ev["job_id"])
        results = call("GET", f"/evaluations/{ev['id']}", cur)["results"]
        overall = next(r for r in results["pairwise"]["win_rates"] if r["category"] is None)
        assert {overall["system_a"], overall["system_b"]} == {"sft", "sft+dpo"} and overall["n"] == 6
        assert 0.0 <= overall["win_rate"] <= 1.0
