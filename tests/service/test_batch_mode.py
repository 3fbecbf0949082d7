"""The judge job in batch mode (issue 21) against the fake teacher's Batch API through the real openai
client: the same verdicts as the synchronous job at half the price, a job that waits holding no worker,
and a worker SIGKILLed right after creating a batch that neither submits it twice nor loses an answer."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.config import get_settings
from app.errors import Invalid
from app.generation.models import LlmCall
from app.records.models import Record
from tests.conftest import PG_URL
from tests.factories import create_job, job_row, seeded_dataset
from tests.fake_teacher import FakeTeacher
from tests.procs import kill, service_env, start_worker
from workers.runner import WAITING, run_job

PRICES = {"price_in_per_1k": 0.001, "price_out_per_1k": 0.002}


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Two teachers on one fake endpoint: "sync" and "batch" (batch API on). Their model names differ so
    neither job finds the other's answers in the cache; the fake answers by prompt, not by model."""
    with FakeTeacher.start() as t:
        common = {"base_url": t.base_url, "max_retries": 2, "backoff_base_s": 0.05, "timeout_s": 60, **PRICES}
        config = json.dumps(
            [
                {"name": "sync", "model": "fake-sync", **common},
                {"name": "batch", "model": "fake-batch", "batch": True, "batch_poll_s": 0.5, **common},
            ]
        )
        monkeypatch.setattr(get_settings(), "teachers", config)
        t.config = config  # type: ignore[attr-defined]
        yield t


def _verdicts(engine: Any, dataset_id: int) -> dict[str, tuple[Any, ...]]:
    with Session(engine) as db:
        rows = db.scalars(select(Record).where(Record.dataset_id == dataset_id)).all()
    return {
        r.instruction: (
            r.status,
            r.reason,
            r.judge_score,
            r.meta["judge"]["status"],
            r.meta["judge"]["attempts"],
        )
        for r in rows
    }


def _paid(engine: Any, job_id: int) -> list[LlmCall]:
    with Session(engine) as db:
        calls = db.scalars(select(LlmCall).where(LlmCall.job_id == job_id, LlmCall.cached.is_(False))).all()
        for c in calls:
            db.expunge(c)
        return list(calls)


def test_judge_in_batch_mode_gives_the_synchronous_verdicts_at_half_price(committed_pg, shared_data, fake):
    fake.set_batches(delay_s=1.0)
    sync_ds, curator = seeded_dataset(committed_pg, shared_data)
    batch_ds, batch_curator = seeded_dataset(committed_pg, shared_data)
    params = {"threshold": 4.0}
    sync_job = create_job(committed_pg, curator, sync_ds, "judge", {"teacher": "sync", **params})
    assert run_job(sync_job) == "succeeded", job_row(committed_pg, sync_job).error
    batch_job = create_job(
        committed_pg, batch_curator, batch_ds, "judge", {"teacher": "batch", "batch": True, **params}
    )

    outcomes = []
    for _ in range(60):
        outcome = run_job(batch_job)
        outcomes.append(outcome)
        if outcome != WAITING:
            break
        waiting = job_row(committed_pg, batch_job)
        assert waiting.status == "running" and waiting.worker is None and waiting.counters["batch"]["batches"]
        time.sleep(0.6)  # the wait the job asked for (batch_poll_s), after which the reaper would send it
    job = job_row(committed_pg, batch_job)
    assert outcomes[-1] == "succeeded", job.error
    assert WAITING in outcomes
    assert _verdicts(committed_pg, batch_ds) == _verdicts(committed_pg, sync_ds)
    assert job.result["kept"] == job_row(committed_pg, sync_job).result["kept"]
    # First answers in one batch, the re-asks of unreadable scores in a second: the only calls made.
    assert fake.stats()["batches_created"] == 2
    paid = _paid(committed_pg, batch_job)
    assert paid and all(c.purpose.endswith(".batch") for c in paid)
    assert len({c.key for c in paid}) == len(paid)
    for c in paid:
        assert c.cost_usd == pytest.approx(c.tokens_in * 0.0005 / 1000 + c.tokens_out * 0.001 / 1000)
    sync_cost = job_row(committed_pg, sync_job).cost_usd
    assert job.cost_usd == pytest.approx(sync_cost / 2, rel=1e-3)


def test_batch_mode_is_refused_for_a_teacher_without_a_batch_api(committed_pg, shared_data, fake):
    dataset_id, curator = seeded_dataset(committed_pg, shared_data)
    with pytest.raises(Invalid, match="does not offer a batch API"):
        create_job(committed_pg, curator, dataset_id, "judge", {"teacher": "sync", "batch": True})


def _env(fake: FakeTeacher, redis_url: str) -> dict[str, str]:
    return service_env(
        database_url=PG_URL,
        broker_url=redis_url,
        data_dir=Path(os.environ["IF_DATA_DIR"]),
        IF_TEACHERS=fake.config,  # type: ignore[attr-defined]
        IF_JOB_LEASE_SECONDS="3",
        IF_REAPER_INTERVAL_SECONDS="1",
        IF_BROKER_VISIBILITY_TIMEOUT="4",
    )


def _send(redis_url: str, *job_ids: int) -> None:
    app = Celery(broker=redis_url)
    for job_id in job_ids:
        app.send_task("workers.tasks.run_job_task", args=[job_id], queue="default")
    app.close()


def _until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_a_waiting_batch_job_holds_no_worker_a_second_job_runs_meanwhile(
    committed_pg, shared_data, fake, redis_url, tmp_path
):
    fake.set_batches(delay_s=20)
    batch_ds, curator = seeded_dataset(committed_pg, shared_data)
    other_ds, other_curator = seeded_dataset(committed_pg, shared_data)
    batch_job = create_job(committed_pg, curator, batch_ds, "judge", {"teacher": "batch", "batch": True})
    other_job = create_job(
        committed_pg, other_curator, other_ds, "judge", {"teacher": "sync", "max_items": 20}
    )
    _send(redis_url, batch_job)
    worker = start_worker(_env(fake, redis_url), tmp_path / "w.log")  # one solo worker: one job at a time
    try:
        _until(lambda: fake.stats()["batches_created"] == 1, 60, "the batch to be submitted")
        _send(redis_url, other_job)
        _until(lambda: job_row(committed_pg, other_job).status == "succeeded", 60, "the second job")
        # The second job ran to its end on the only worker while the batch was still being answered.
        waiting = job_row(committed_pg, batch_job)
        assert waiting.status == "running" and fake.state.batches["batch_1"]["status"] == "in_progress"
        assert waiting.counters["batch"]["open"]["batch_id"] == "batch_1"
        _until(lambda: job_row(committed_pg, batch_job).status == "succeeded", 120, "the batch job")
    finally:
        kill(worker)
    job = job_row(committed_pg, batch_job)
    assert job.attempts >= 3  # submitted, polled at least once while in progress, finished
    assert job.result["kept"] + job.result["below_threshold"] + job.result["unscored"] == 175


@pytest.mark.slow
def test_worker_sigkilled_right_after_creating_a_batch_submits_nothing_twice_and_loses_nothing(
    committed_pg, shared_data, fake, redis_url, tmp_path
):
    # The fake holds its answer to "create batch" after the batch exists: the worker is killed then, before
    # it could save the batch id.
    fake.set_batches(delay_s=1, create_hold_s=30)
    dataset_id, curator = seeded_dataset(committed_pg, shared_data)
    job_id = create_job(committed_pg, curator, dataset_id, "judge", {"teacher": "batch", "batch": True})
    env = _env(fake, redis_url)
    _send(redis_url, job_id)
    first = start_worker(env, tmp_path / "w1.log")
    try:
        _until(lambda: fake.stats()["batches_created"] == 1, 60, "the batch to be created")
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        kill(first)
    saved = job_row(committed_pg, job_id).result["batch"]["submissions"]
    assert len(saved) == 1 and saved[0]["file_id"] and saved[0]["batch_id"] is None
    fake.set_batches(create_hold_s=0)
    second = start_worker(env, tmp_path / "w2.log")
    try:
        _until(lambda: job_row(committed_pg, job_id).status in ("succeeded", "failed"), 120, "the job")
    finally:
        kill(second)
    job = job_row(committed_pg, job_id)
    assert job.status == "succeeded", job.error
    batches = list(fake.state.batches.values())
    labels = Counter(b["metadata"]["instructforge_submission"] for b in batches)
    assert labels[f"if-job{job_id}-s0"] == 1 and max(labels.values()) == 1
    submitted = Counter(
        json.loads(line)["custom_id"]
        for b in batches
        for line in fake.state.files[b["input_file_id"]].decode().splitlines()
    )
    assert max(submitted.values()) == 1, "a request went into two batches"
    with Session(committed_pg) as db:
        judged = db.scalar(
            select(func.count()).where(Record.dataset_id == dataset_id, Record.meta["judge"].is_not(None))
        )
    assert judged == 175
    assert {c.key for c in _paid(committed_pg, job_id)} == set(submitted)  # every answer kept, once


def test_cancelling_a_waiting_batch_job_ends_it_cancelled_without_running_it_again(
    committed_pg, shared_data, fake, redis_url
):
    from app.jobs import service as jobs
    from app.jobs.broker import make_celery
    from workers.tasks import reap_once

    fake.set_batches(delay_s=60)
    dataset_id, curator = seeded_dataset(committed_pg, shared_data)
    job_id = create_job(committed_pg, curator, dataset_id, "judge", {"teacher": "batch", "batch": True})
    assert run_job(job_id) == WAITING
    with Session(committed_pg) as db:
        assert jobs.cancel_job(db=db, user=db.merge(curator), job_id=job_id).status == "running"
        db.commit()
    time.sleep(0.6)  # its wait is over: the reaper sends it, and the worker that gets it ends it
    app = make_celery(redis_url)
    try:
        assert job_id in reap_once({"default"}, app=app)
    finally:
        app.close()
    assert run_job(job_id) is None
    job = job_row(committed_pg, job_id)
    assert job.status == "cancelled" and fake.stats()["batches_created"] == 1


def test_the_cost_estimate_of_a_batch_mode_judge_is_at_batch_prices(client, db, shared_data, fake):
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
        body = {"dataset_id": dataset.id, "kind": "judge", "params": {"teacher": "batch", "batch": batch}}
        resp = client.post("/api/v1/generation/estimate", json=body, headers=token_for(db, curator))
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    sync, batch = estimate(False), estimate(True)
    assert batch["total_calls"] == sync["total_calls"] == 175
    assert batch["tokens_in_per_call"] == sync["tokens_in_per_call"]  # the same sample, from the cache
    assert batch["estimated_cost_usd"] == pytest.approx(sync["estimated_cost_usd"] / 2)


def _until_done(engine: Any, job_id: int, poll_s: float = 0.6) -> list[str | None]:
    """A job's visits, in process, as the reaper would make them: until it stops asking to wait."""
    outcomes: list[str | None] = []
    for _ in range(60):
        outcomes.append(run_job(job_id))
        if outcomes[-1] != WAITING:
            return outcomes
        waiting = job_row(engine, job_id)
        assert waiting.status == "running" and waiting.worker is None and "batch" in waiting.counters
        time.sleep(poll_s)
    raise AssertionError(f"job {job_id} still waiting after 60 visits")


def _teacher_config_rows(engine: Any, dataset_id: int, source: str) -> list[tuple[Any, ...]]:
    with Session(engine) as db:
        rows = db.scalars(
            select(Record).where(Record.dataset_id == dataset_id, Record.source == source).order_by(Record.id)
        ).all()
        return [(r.parent_id, r.instruction, r.output, r.status, r.reason, r.judge_score) for r in rows]


def test_rewrite_in_batch_mode_leaves_alone_a_record_a_person_edited_while_the_batch_was_out(
    committed_pg, shared_data, fake, tmp_path
):
    from tests.service.test_rewrite_reasoning_jobs import _alpaca, _dataset, _decide, _records

    fake.set_batches(delay_s=0.5)
    dataset_id, curator = _dataset(committed_pg, tmp_path, _alpaca(shared_data, 5))
    job_id = create_job(committed_pg, curator, dataset_id, "rewrite", {"teacher": "batch", "batch": True})
    assert run_job(job_id) == WAITING  # submitted; nothing is written until every answer is in
    before = _records(committed_pg, dataset_id)
    assert all(not (r.meta or {}).get("rewrites") for r in before)
    edited = before[0]
    _decide(committed_pg, curator, edited.id, output="A person's own answer.")
    time.sleep(0.6)
    assert _until_done(committed_pg, job_id)[-1] == "succeeded", job_row(committed_pg, job_id).error
    job = job_row(committed_pg, job_id)
    after = {r.id: r for r in _records(committed_pg, dataset_id)}
    assert after[edited.id].output == "A person's own answer." and not after[edited.id].meta.get("rewrites")
    # The person's edit made it theirs: the next visit no longer asks for it (human_skipped), and its
    # answer, billed by the provider all the same, is in the ledger but written nowhere.
    assert job.result["human_skipped"] == 1
    assert job.result["batch"]["batches"] == ["batch_1"] and job.result["batch"]["open"] is None
    assert job.result["rewritten"] == sum(bool((r.meta or {}).get("rewrites")) for r in after.values()) > 0
    paid = _paid(committed_pg, job_id)
    assert sorted(c.purpose for c in paid) == ["rewrite.batch"] * 4 + ["unasked.batch"]
    assert job.cost_usd == pytest.approx(sum(c.cost_usd for c in paid), abs=1e-6)


def test_reasoning_in_batch_mode_checks_every_solution_answered_by_one_batch(
    committed_pg, shared_data, fake, tmp_path
):
    from tests.service.test_rewrite_reasoning_jobs import _dataset, _gsm8k

    fake.set_batches(delay_s=0.3)
    dataset_id, curator = _dataset(committed_pg, tmp_path, _gsm8k(shared_data, 4))
    job_id = create_job(committed_pg, curator, dataset_id, "reasoning", {"teacher": "batch", "batch": True})
    assert _until_done(committed_pg, job_id)[-1] == "succeeded", job_row(committed_pg, job_id).error
    result = job_row(committed_pg, job_id).result
    checked = result["matched"] + result["mismatched"] + result["unparseable"]
    assert checked == result["items"] == 4 and result["match_rate"] == round(result["matched"] / 4, 4)
    assert len(_teacher_config_rows(committed_pg, dataset_id, "reasoning")) == 4
    paid = _paid(committed_pg, job_id)
    assert [c.purpose for c in paid] == ["reasoning.batch"] * 4 and fake.stats()["batches_created"] == 1


@pytest.mark.slow
def test_backtranslation_worker_sigkilled_creating_its_score_batch_submits_nothing_twice_and_loses_nothing(
    committed_pg, shared_data, fake, redis_url, tmp_path
):
    from tests.service.test_backtranslate_job import answers, passages_dataset

    # The instructions' batch goes through; the fake then holds its answer to creating the scores' batch
    # (which exists by then) and the worker is killed before it could save that batch's id.
    fake.set_batches(delay_s=0.5)
    texts = answers(shared_data, 2)
    sync_ds, sync_curator = passages_dataset(committed_pg, tmp_path, texts)
    sync_job = create_job(committed_pg, sync_curator, sync_ds, "backtranslate", {"teacher": "sync"})
    assert run_job(sync_job) == "succeeded", job_row(committed_pg, sync_job).error
    dataset_id, curator = passages_dataset(committed_pg, tmp_path, texts)
    job_id = create_job(
        committed_pg, curator, dataset_id, "backtranslate", {"teacher": "batch", "batch": True}
    )
    env = _env(fake, redis_url)
    _send(redis_url, job_id)
    first = start_worker(env, tmp_path / "w1.log")
    try:
        _until(lambda: fake.stats()["batches_created"] == 1, 60, "the instructions' batch")
        fake.set_batches(create_hold_s=6)
        _until(lambda: fake.stats()["batches_created"] == 2, 60, "the scores' batch to be created")
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        kill(first)
    saved = job_row(committed_pg, job_id).result["batch"]["submissions"]
    assert [s["batch_id"] for s in saved] == ["batch_1", None] and saved[1]["file_id"]
    fake.set_batches(create_hold_s=0)
    # Another worker takes the job over once the dead one's lease has lapsed: this process, as the reaper
    # would send it (a second worker process would prove no more, at the cost of its start).
    outcomes: list[str | None] = []
    deadline = time.time() + 90
    while not outcomes or outcomes[-1] not in ("succeeded", "failed"):
        assert time.time() < deadline, outcomes
        outcomes.append(run_job(job_id))
        time.sleep(0.5)
    job = job_row(committed_pg, job_id)
    assert job.status == "succeeded", job.error
    batches = list(fake.state.batches.values())
    labels = Counter(b["metadata"]["instructforge_submission"] for b in batches)
    assert labels[f"if-job{job_id}-s1"] == 1 and max(labels.values()) == 1
    submitted = Counter(
        json.loads(line)["custom_id"]
        for b in batches
        for line in fake.state.files[b["input_file_id"]].decode().splitlines()
    )
    assert max(submitted.values()) == 1, "a request went into two batches"
    paid = _paid(committed_pg, job_id)
    assert {c.key for c in paid} == set(submitted)  # every answer kept, once
    # Two stages, each its own batch: the first held instructions only; every score went in after its
    # instruction came back.
    first_batch = {
        json.loads(line)["custom_id"]
        for line in fake.state.files[fake.state.batches["batch_1"]["input_file_id"]].decode().splitlines()
    }
    assert {c.purpose for c in paid if c.key in first_batch} == {"backtranslate.instruction.batch"}
    assert "backtranslate.score.batch" in {c.purpose for c in paid}
    # The synchronous job's instructions, scores and decisions (parents differ: each dataset has its own
    # passages), at half the cost.
    sync_rows = _teacher_config_rows(committed_pg, sync_ds, "backtranslation")
    batch_rows = _teacher_config_rows(committed_pg, dataset_id, "backtranslation")
    assert len(batch_rows) == len(sync_rows) == job.result["passages"] > 2
    assert job.result["batch"]["batches"] == [b["id"] for b in batches]
    assert [r[1:] for r in batch_rows] == [r[1:] for r in sync_rows]
    assert job.cost_usd == pytest.approx(job_row(committed_pg, sync_job).cost_usd / 2, rel=1e-3)


def test_respond_in_batch_mode_stores_the_synchronous_candidates_one_sample_batch_after_another(
    committed_pg, shared_data, fake, tmp_path
):
    from tests.service.test_respond_rank import _candidates, _dataset, _wild_prompts

    fake.set_batches(delay_s=0.3)
    rows = _wild_prompts(shared_data, 1)
    sync_ds, curator = _dataset(committed_pg, tmp_path, rows, fmt="mt_bench")
    batch_ds, batch_curator = _dataset(committed_pg, tmp_path, rows, fmt="mt_bench")
    params = {"n": 2, "temperature": 0.8}
    sync_job = create_job(committed_pg, curator, sync_ds, "respond", {"teacher": "sync", **params})
    assert run_job(sync_job) == "succeeded", job_row(committed_pg, sync_job).error
    batch_job = create_job(
        committed_pg, batch_curator, batch_ds, "respond", {"teacher": "batch", "batch": True, **params}
    )
    assert _until_done(committed_pg, batch_job)[-1] == "succeeded", job_row(committed_pg, batch_job).error

    def contents(dataset_id: int) -> list[list[str]]:
        return [
            sorted(c.content for c in cands)
            for _, cands in sorted(_candidates(committed_pg, dataset_id).items())
        ]

    assert contents(batch_ds) == contents(sync_ds) and sum(map(len, contents(batch_ds))) == 2
    assert fake.stats()["batches_created"] == 2  # one per sample (the seeds differ)
    assert job_row(committed_pg, batch_job).cost_usd == pytest.approx(
        job_row(committed_pg, sync_job).cost_usd / 2, rel=1e-3
    )
    with pytest.raises(Invalid, match="does not offer a batch API"):
        create_job(
            committed_pg,
            curator,
            sync_ds,
            "respond",
            {"teacher": "batch", "batch": True, "samplers": [{"teacher": "sync"}]},
        )


def test_the_api_refuses_batch_mode_with_a_teacher_without_one_naming_the_field_and_storing_nothing(
    client, db, fake
):
    from app.jobs.models import Job
    from tests.factories import make_dataset, make_project, make_records, make_user, token_for

    curator = make_user(db, "curator")
    dataset = make_dataset(db, make_project(db, (curator, "curator")))
    make_records(db, dataset, 2)
    for kind in ("backtranslate", "rewrite", "reasoning", "respond"):
        body = {"kind": kind, "dataset_id": dataset.id, "params": {"teacher": "sync", "batch": True}}
        resp = client.post("/api/v1/jobs", json=body, headers=token_for(db, curator))
        assert resp.status_code == 422 and resp.json()["field"] == "params.batch", (kind, resp.text)
    assert db.scalars(select(Job).where(Job.dataset_id == dataset.id)).first() is None
