"""The rewrite and reasoning job forms: generated from their parameters, they estimate (the job then reuses
the answers paid for), start the job, and refuse a goal-less custom rewrite with a 422 naming why."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.generation.models import LlmCacheEntry, LlmCall
from app.jobs.models import Job
from app.records.models import Record
from tests.factories import make_dataset, make_project, make_user, run_job_now
from tests.ui.test_pages import login


def _gsm8k_dataset(engine: Any, shared_data: Path, n: int) -> tuple[Any, int]:
    rows = json.loads((shared_data / "alpacadatacleaned" / "gsm_8k_train.json").read_text(encoding="utf-8"))
    with Session(engine, expire_on_commit=False) as db:
        curator = make_user(db, "curator")
        dataset = make_dataset(db, make_project(db, (curator, "curator")))
        db.add_all(Record(dataset_id=dataset.id, source="import:alpaca", **row) for row in rows[:n])
        db.commit()
        db.expunge(curator)
        return curator, dataset.id


@pytest.mark.parametrize("backend", ["postgresql"])
@pytest.mark.parametrize(
    ("kind", "params", "fields"),
    [
        ("rewrite", {"preset": "friendly"}, ("preset", "instruction", "target_language", "override_human")),
        ("reasoning", {"reference_from": "last_number"}, ("reference_from", "max_items", "batch_size")),
    ],
)
def test_rewrite_and_reasoning_forms_estimate_and_their_jobs_reuse_the_answers_paid_for(
    committed: Any,
    client: Any,
    teacher: Any,
    shared_data: Path,
    kind: str,
    params: dict[str, Any],
    fields: tuple[str, ...],
) -> None:
    curator, dataset_id = _gsm8k_dataset(committed, shared_data, 5)
    token = login(client, curator)
    url = f"/ui/datasets/{dataset_id}/jobs/new/{kind}"
    page = client.get(url)
    assert page.status_code == 200 and 'data-role="estimate"' in page.text
    assert all(f'name="{f}"' in page.text for f in fields)
    # The goal preset and where the reference is read are chosen from a list, not typed.
    choice = {"rewrite": "preset", "reasoning": "reference_from"}[kind]
    assert f'<select name="{choice}">' in page.text
    answer = client.post(f"{url}/estimate", data={"csrf_token": token, "teacher": "fake", **params})
    assert answer.status_code == 200, answer.text
    estimate = answer.json()
    assert estimate["sampled_calls"] == 3 and estimate["total_calls"] == 5
    with Session(committed) as db:
        estimated = set(db.scalars(select(LlmCacheEntry.key)))
    assert len(estimated) == 3
    job = run_job_now(committed, curator, dataset_id, kind, {"teacher": "fake", **params})
    with Session(committed) as db:
        calls = db.execute(select(LlmCall.key, LlmCall.cached).where(LlmCall.job_id == job.id)).all()
    assert estimated <= {key for key, cached in calls if cached}
    assert not estimated & {key for key, cached in calls if not cached}


def test_the_forms_start_the_jobs_and_a_custom_rewrite_without_a_goal_is_refused(
    client: Any, db: Session, teacher: Any, shared_data: Path
) -> None:
    rows = json.loads((shared_data / "alpacadatacleaned" / "gsm_8k_train.json").read_text(encoding="utf-8"))
    curator = make_user(db, "curator")
    dataset = make_dataset(db, make_project(db, (curator, "curator")))
    db.add_all(Record(dataset_id=dataset.id, source="import:alpaca", **row) for row in rows[:3])
    db.flush()
    token = login(client, curator)
    base = f"/ui/datasets/{dataset.id}/jobs/new"
    started = client.post(
        f"{base}/reasoning", data={"csrf_token": token, "teacher": "fake"}, follow_redirects=False
    )
    assert started.status_code == 303
    refused = client.post(
        f"{base}/rewrite", data={"csrf_token": token, "teacher": "fake", "preset": "custom"}
    )
    assert refused.status_code == 422 and "needs an instruction" in refused.text
    started = client.post(
        f"{base}/rewrite",
        data={
            "csrf_token": token,
            "teacher": "fake",
            "preset": "custom",
            "instruction": "Use bullet points.",
        },
        follow_redirects=False,
    )
    assert started.status_code == 303
    jobs = db.scalars(select(Job).where(Job.dataset_id == dataset.id).order_by(Job.id)).all()
    assert [j.kind for j in jobs] == ["reasoning", "rewrite"]
    assert jobs[1].params["instruction"] == "Use bullet points." and jobs[1].params["preset"] == "custom"
