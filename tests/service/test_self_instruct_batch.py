"""Self-Instruct in batch mode (issue 21): the instruction rounds answered live, the instances stage (each
task's classification, then its instances) through the fake teacher's Batch API with the real openai
client, from the real Self-Instruct seed tasks; Evol-Instruct refuses batch mode."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import get_settings
from app.generation.models import LlmCall
from app.records.models import Record
from tests.factories import create_job, job_row, seeded_dataset
from tests.fake_teacher import FakeTeacher
from tests.procs import kill, start_worker
from tests.service.test_batch_mode import _env, _send, _until, _until_done
from workers.runner import WAITING, run_job

PRICES = {"price_in_per_1k": 0.001, "price_out_per_1k": 0.002}
TARGET = 6
PARAMS = {"teacher": "batch", "batch": True, "target": TARGET, "batch_size": 4}


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A "sync" teacher and a "batch" one (batch API on, half price, two batches per request at most)."""
    with FakeTeacher.start() as t:
        common = {"base_url": t.base_url, "max_retries": 2, "backoff_base_s": 0.05, "timeout_s": 60, **PRICES}
        config = json.dumps(
            [
                {"name": "sync", "model": "fake-sync", **common},
                {
                    "name": "batch",
                    "model": "fake-batch",
                    "batch": True,
                    "batch_poll_s": 0.3,
                    "batch_max_attempts": 2,
                    **common,
                },
            ]
        )
        monkeypatch.setattr(get_settings(), "teachers", config)
        t.config = config  # type: ignore[attr-defined]
        yield t


def _calls(engine: Any, job_id: int) -> list[LlmCall]:
    with Session(engine) as db:
        calls = db.scalars(select(LlmCall).where(LlmCall.job_id == job_id, LlmCall.cached.is_(False))).all()
        for c in calls:
            db.expunge(c)
        return list(calls)


def _records(engine: Any, dataset_id: int) -> list[Record]:
    with Session(engine) as db:
        rows = db.scalars(
            select(Record).where(Record.dataset_id == dataset_id, Record.source == "self_instruct")
        ).all()
        for r in rows:
            db.expunge(r)
        return list(rows)


def _asked(fake: FakeTeacher, batch_id: str) -> list[str]:
    data = fake.state.files[fake.state.batches[batch_id]["input_file_id"]].decode()
    return [json.loads(line)["custom_id"] for line in data.splitlines() if line.strip()]


def _file_ids(fake: FakeTeacher, batch_id: str, which: str) -> set[str]:
    file_id = fake.state.batches[batch_id][which]
    if file_id is None:
        return set()
    return {json.loads(x)["custom_id"] for x in fake.state.files[file_id].decode().splitlines() if x.strip()}


def test_self_instruct_in_batch_mode_reaches_its_target_with_the_instances_stage_at_batch_prices(
    committed_pg, shared_data, fake
):
    fake.set_batches(delay_s=0.3)
    dataset_id, curator = seeded_dataset(committed_pg, shared_data)
    job_id = create_job(committed_pg, curator, dataset_id, "self_instruct", PARAMS)
    assert run_job(job_id) == WAITING  # the classifications submitted; nothing written yet
    assert not _records(committed_pg, dataset_id)
    time.sleep(0.35)  # the wait it asked for (batch_poll_s), after which the reaper would send it
    outcomes = _until_done(committed_pg, job_id, poll_s=0.35)  # each wait: no worker held, counters shown
    job = job_row(committed_pg, job_id)
    assert outcomes[-1] == "succeeded", job.error
    result = job.result
    assert result["stop_reason"] == "target" and result["kept_tasks"] == TARGET
    # One batch of classifications, then one of instances (output-first or input-first by the verdict).
    assert result["batch"]["batches"] == ["batch_1", "batch_2"] and result["batch"]["open"] is None
    calls = _calls(committed_pg, job_id)
    purpose = {c.key: c.purpose for c in calls}
    assert {purpose[k] for k in _asked(fake, "batch_1")} == {"self_instruct.classify.batch"}
    assert {purpose[k] for k in _asked(fake, "batch_2")} == {"self_instruct.instances.batch"}
    # The spares go too: batch_spares (default 0.1) of the 6 tasks needed, rounded up.
    assert len(_asked(fake, "batch_1")) == len(_asked(fake, "batch_2")) == TARGET + 1
    assert len(purpose) == len(calls)  # nothing paid twice
    # The instruction rounds were answered live, at the normal prices; the batches at half of them.
    for c in calls:
        if c.purpose.endswith(".batch"):
            assert c.cost_usd == pytest.approx(c.tokens_in * 0.0005 / 1000 + c.tokens_out * 0.001 / 1000)
        else:
            assert c.purpose == "self_instruct.instructions"
            assert c.cost_usd == pytest.approx(c.tokens_in * 0.001 / 1000 + c.tokens_out * 0.002 / 1000)
    assert job.cost_usd == pytest.approx(sum(c.cost_usd for c in calls), abs=1e-6)
    # Stored as the synchronous job stores them; each kept instance names the batch answer it came from.
    records = _records(committed_pg, dataset_id)
    kept = [r for r in records if r.status == "pending"]
    assert len({r.instruction for r in kept}) == TARGET
    assert all(r.job_id == job_id and r.teacher_model == "fake-batch" for r in records)
    assert all(purpose.get(r.prompt_hash or "") == "self_instruct.instances.batch" for r in kept)
    assert result["records_kept"] == len(kept)


def test_failed_and_expired_requests_are_resubmitted_alone_and_a_task_without_instances_gives_way_to_a_spare(
    committed_pg, shared_data, fake
):
    # The classifications' batch expires with half answered and its first two lines failed; then the first
    # line of the instances' batch fails, and fails again in the batch that asks it once more.
    fake.set_batches(delay_s=0.2, expire_next=1, fail_lines=2)
    dataset_id, curator = seeded_dataset(committed_pg, shared_data)
    job_id = create_job(committed_pg, curator, dataset_id, "self_instruct", PARAMS)
    armed: set[int] = set()
    outcome = None
    for _ in range(40):
        outcome = run_job(job_id)
        if outcome != WAITING:
            break
        created = fake.stats()["batches_created"]
        if created in (2, 3) and created not in armed:  # batch_3 and batch_4 each lose their first line
            fake.set_batches(fail_lines=1)
            armed.add(created)
        time.sleep(0.3)
    job = job_row(committed_pg, job_id)
    assert outcome == "succeeded", job.error
    first = fake.state.batches["batch_1"]
    assert first["status"] == "expired"
    unfinished = _file_ids(fake, "batch_1", "error_file_id")
    assert unfinished and set(_asked(fake, "batch_2")) == unfinished  # only what was unfinished, again
    assert not unfinished & _file_ids(fake, "batch_1", "output_file_id")
    instances = _asked(fake, "batch_3")
    assert _asked(fake, "batch_4") == instances[:1]  # its failed line alone, then it gave up
    assert fake.stats()["batches_created"] == 4
    # That task is rejected with the synchronous reason and the batch's error; a spare took its place.
    records = _records(committed_pg, dataset_id)
    failed = [r for r in records if r.reason == "teacher_error"]
    assert len(failed) == 1 and "HTTP 500" in (failed[0].meta.get("reason_detail") or "")
    assert failed[0].status == "filtered"
    assert job.result["kept_tasks"] == TARGET and job.result["stop_reason"] == "target"
    assert len({r.instruction for r in records if r.status == "pending"}) == TARGET
    keys = [c.key for c in _calls(committed_pg, job_id)]
    assert len(keys) == len(set(keys))


@pytest.mark.slow
def test_worker_sigkilled_creating_the_instances_batch_submits_nothing_twice_and_loses_nothing(
    committed_pg, shared_data, fake, redis_url, tmp_path
):
    # The classifications' batch goes through; the fake then holds its answer to creating the instances'
    # batch (which exists by then), and the worker is killed before it could save that batch's id.
    fake.set_batches(delay_s=0.3)
    dataset_id, curator = seeded_dataset(committed_pg, shared_data)
    job_id = create_job(committed_pg, curator, dataset_id, "self_instruct", PARAMS)
    env = _env(fake, redis_url)
    _send(redis_url, job_id)
    first = start_worker(env, tmp_path / "w1.log")
    try:
        _until(lambda: fake.stats()["batches_created"] == 1, 60, "the classifications' batch")
        fake.set_batches(create_hold_s=6)
        _until(lambda: fake.stats()["batches_created"] == 2, 60, "the instances' batch to be created")
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        kill(first)
    saved = job_row(committed_pg, job_id).result["batch"]["submissions"]
    assert [s["batch_id"] for s in saved] == ["batch_1", None] and saved[1]["file_id"]
    fake.set_batches(create_hold_s=0)
    # Taken over once the dead worker's lease lapsed: in this process, as the reaper would send it.
    outcomes: list[str | None] = []
    deadline = time.time() + 60
    while not outcomes or outcomes[-1] not in ("succeeded", "failed"):
        assert time.time() < deadline, outcomes
        outcomes.append(run_job(job_id))
        time.sleep(0.4)
    job = job_row(committed_pg, job_id)
    assert job.status == "succeeded", job.error
    batches = list(fake.state.batches.values())
    labels = Counter(b["metadata"]["instructforge_submission"] for b in batches)
    assert labels[f"if-job{job_id}-s1"] == 1 and max(labels.values()) == 1 and len(batches) == 2
    submitted = Counter(k for b in batches for k in _asked(fake, b["id"]))
    assert max(submitted.values()) == 1, "a request went into two batches"
    calls = _calls(committed_pg, job_id)
    assert {c.key for c in calls if c.purpose.endswith(".batch")} == set(submitted)  # every answer, once
    assert len({c.key for c in calls}) == len(calls)
    assert job.result["kept_tasks"] == TARGET
    assert len({r.instruction for r in _records(committed_pg, dataset_id) if r.status == "pending"}) == TARGET


def test_evol_refuses_batch_mode_naming_the_field_and_storing_nothing(client, db, fake):
    from app.jobs.models import Job
    from tests.factories import make_dataset, make_project, make_records, make_user, token_for

    curator = make_user(db, "curator")
    dataset = make_dataset(db, make_project(db, (curator, "curator")))
    make_records(db, dataset, 2)
    body = {"kind": "evol", "dataset_id": dataset.id, "params": {"teacher": "batch", "batch": True}}
    resp = client.post("/api/v1/jobs", json=body, headers=token_for(db, curator))
    assert resp.status_code == 422 and resp.json()["field"] == "params.batch", resp.text
    assert "batch mode" in resp.json()["detail"]
    assert db.scalars(select(Job).where(Job.dataset_id == dataset.id)).first() is None
    # Self-Instruct takes it, but only with a teacher that has a batch API.
    body = {"kind": "self_instruct", "dataset_id": dataset.id, "params": {"teacher": "sync", "batch": True}}
    resp = client.post("/api/v1/jobs", json=body, headers=token_for(db, curator))
    assert resp.status_code == 422 and resp.json()["field"] == "params.batch", resp.text


def test_the_estimate_prices_only_the_instances_stage_at_batch_prices_and_the_form_offers_it(
    client, db, shared_data, fake
):
    from app.imports.service import parse_file, write_records
    from tests.factories import make_dataset, make_project, make_user, token_for

    curator = make_user(db, "curator")
    dataset = make_dataset(db, make_project(db, (curator, "curator")))
    records, _, fmt = parse_file(
        shared_data / "self-instruct" / "seed_tasks.jsonl", fmt="self_instruct", filename=None, skip_bad=False
    )
    write_records(
        sessions=[db],
        dataset_id=dataset.id,
        records=records,
        fmt=fmt,
        key_prefix="seed",
        job_id=None,
        batch_size=1000,
    )

    def estimate(batch: bool) -> dict[str, Any]:
        params = {"teacher": "batch", "batch": batch, "target": 30}
        body = {"dataset_id": dataset.id, "kind": "self_instruct", "params": params}
        resp = client.post("/api/v1/generation/estimate", json=body, headers=token_for(db, curator))
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    sync, batch = estimate(False), estimate(True)
    assert batch["batch"] and not sync["batch"] and sync["total_calls"] == 10 + 60
    # The 10 instruction prompts at the normal prices; the instances stage at half of them, for the 30 tasks
    # and the 3 spares sent with them (batch_spares 0.1).
    assert batch["total_calls"] == 10 + 66
    per_call = sync["cost_per_call_usd"]
    assert batch["estimated_cost_usd"] == pytest.approx(10 * per_call + 66 * per_call / 2)
    from tests.ui.test_pages import login

    login(client, curator)
    page = client.get(f"/ui/datasets/{dataset.id}/jobs/new/self_instruct").text
    assert 'name="batch"' in page and "Only the instances stage" in page
    assert 'name="batch"' not in client.get(f"/ui/datasets/{dataset.id}/jobs/new/evol").text
