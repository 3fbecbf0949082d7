"""Generation jobs against the fake OpenAI-compatible teacher (real openai client over HTTP)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.generation.cache import CallLog
from app.generation.models import LlmCacheEntry, LlmCall
from app.imports.service import parse_file, write_records
from app.jobs import service as jobs
from app.pipeline.llm import Gateway, run_coroutine
from app.records.models import Record
from tests.conftest import PG_URL
from tests.factories import create_job, job_row, make_dataset, make_project, make_user, seeded_dataset
from tests.fake_teacher import teacher_for
from tests.procs import kill, service_env, start_worker
from workers.runner import run_job


def test_self_instruct_job_generates_classification_aware_records_with_provenance(
    committed_pg, shared_data, teacher
):
    dataset_id, curator = seeded_dataset(committed_pg, shared_data)
    job_id = create_job(
        committed_pg, curator, dataset_id, "self_instruct", {"teacher": "fake", "target": 25, "batch_size": 4}
    )
    assert run_job(job_id) == "succeeded", job_row(committed_pg, job_id).error
    job = job_row(committed_pg, job_id)
    with Session(committed_pg) as db:
        rows = db.scalars(select(Record).where(Record.job_id == job_id)).all()
        calls = db.scalar(select(func.count()).where(LlmCall.job_id == job_id, LlmCall.cached.is_(False)))
    kept = [r for r in rows if r.status == "pending"]
    rejected = [r for r in rows if r.status == "filtered"]
    assert job.result["kept_tasks"] >= 25 and kept
    assert len(kept) == job.result["records_kept"] and len(rejected) == job.result["records_rejected"]
    assert all(r.reason for r in rejected)
    assert {r.teacher_model for r in rows} == {"fake-model"} and all(
        r.source.startswith("self_instruct") for r in rows
    )
    assert any(r.is_classification for r in kept) and all(r.label for r in kept if r.is_classification)
    assert calls > 0 and job.tokens_in > 0 and job.cost_usd > 0


def test_teacher_down_pauses_the_job_with_a_clear_message(committed_pg, shared_data, teacher):
    dataset_id, curator = seeded_dataset(committed_pg, shared_data)
    teacher.fault(500, count=10_000)
    job_id = create_job(committed_pg, curator, dataset_id, "self_instruct", {"teacher": "fake", "target": 5})
    assert run_job(job_id) == "paused"
    job = job_row(committed_pg, job_id)
    assert "teacher" in job.error and "resume" in job.error


def test_unknown_teacher_is_refused_at_creation(db, teacher):
    from app.errors import Invalid

    curator = make_user(db, "curator")
    dataset = make_dataset(db, make_project(db, (curator, "curator")))
    with pytest.raises(Invalid, match="unknown teacher 'nope'; known: fake"):
        jobs.create_job(
            db=db,
            user=curator,
            kind="self_instruct",
            project_id=None,
            dataset_id=dataset.id,
            params={"teacher": "nope"},
            enqueue=False,
        )


def test_a_paid_call_is_in_the_job_ledger_with_its_cache_entry_before_any_flush(
    committed_pg, shared_data, teacher
):
    dataset_id, curator = seeded_dataset(committed_pg, shared_data)
    job_id = create_job(committed_pg, curator, dataset_id, "self_instruct", {"teacher": "fake", "target": 1})
    log = CallLog(job_id)
    prompts = [f"Explain ledger case {job_id}-{i}." for i in range(3)]

    async def ask_all() -> None:
        async with Gateway(
            teacher_for(teacher, price_in_per_1k=1.0), cache=log.response_cache, on_call=log
        ) as gateway:
            for prompt in prompts:
                await gateway.complete(prompt, purpose="test")
            await gateway.complete(prompts[0], purpose="test")  # the same request again: a cache hit

    run_coroutine(ask_all())

    def ledger() -> tuple[list[bool], int]:
        with Session(committed_pg) as db:
            cached = list(
                db.scalars(select(LlmCall.cached).where(LlmCall.job_id == job_id).order_by(LlmCall.id))
            )
            keys = {c.key for c in db.scalars(select(LlmCall).where(LlmCall.job_id == job_id))}
            entries = db.scalar(select(func.count()).where(LlmCacheEntry.key.in_(keys)))
        return cached, entries

    # Nothing flushed yet (a worker killed here): the three paid calls are stored, with their responses.
    assert ledger() == ([False, False, False], 3)
    assert teacher.stats()["completions"] == 3
    usage = log.flush()  # the cache hit joins them; the paid calls are not counted twice
    assert ledger() == ([False, False, False, True], 3)
    with Session(committed_pg) as db:
        paid_cost = db.scalar(
            select(func.sum(LlmCall.cost_usd)).where(LlmCall.job_id == job_id, LlmCall.cached.is_(False))
        )
    assert usage["cost_usd"] == pytest.approx(paid_cost) and usage["cost_usd"] > 0


@pytest.mark.slow
def test_sigkilled_worker_mid_generation_resumes_without_duplicates_or_repaid_calls(
    committed_pg, shared_data, teacher, redis_url, tmp_path
):
    teacher.set_latency(150)
    dataset_id, curator = seeded_dataset(committed_pg, shared_data)
    target = 60
    job_id = create_job(
        committed_pg,
        curator,
        dataset_id,
        "self_instruct",
        {"teacher": "fake", "target": target, "batch_size": 4},
    )
    env = service_env(
        database_url=PG_URL,
        broker_url=redis_url,
        data_dir=Path(os.environ["IF_DATA_DIR"]),
        IF_TEACHERS=teacher.config,
        IF_JOB_LEASE_SECONDS="3",
        IF_REAPER_INTERVAL_SECONDS="1",
        IF_BROKER_VISIBILITY_TIMEOUT="4",
    )
    app = Celery(broker=redis_url)
    app.send_task("workers.tasks.run_job_task", args=[job_id], queue="default")
    app.close()
    first = start_worker(env, tmp_path / "w1.log")
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            job = job_row(committed_pg, job_id)
            if job.progress_done >= 10:
                break
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        kill(first)
    at_kill = teacher.stats()
    assert 0 < job_row(committed_pg, job_id).progress_done < target

    second = start_worker(env, tmp_path / "w2.log")
    try:
        deadline = time.time() + 240
        while time.time() < deadline and job_row(committed_pg, job_id).status not in ("succeeded", "failed"):
            time.sleep(0.2)
    finally:
        kill(second)
    job = job_row(committed_pg, job_id)
    assert job.status == "succeeded", job.error
    assert job.attempts >= 2
    final = teacher.stats()
    with Session(committed_pg) as db:
        n = db.scalar(select(func.count()).where(Record.job_id == job_id))
        keys = db.scalar(select(func.count(func.distinct(Record.gen_key))).where(Record.job_id == job_id))
        replayed = db.scalar(select(func.count()).where(LlmCall.job_id == job_id, LlmCall.cached.is_(True)))
        paid, ledger_cost = db.execute(
            select(func.count(), func.coalesce(func.sum(LlmCall.cost_usd), 0.0)).where(
                LlmCall.job_id == job_id, LlmCall.cached.is_(False), LlmCall.error.is_(None)
            )
        ).one()
    assert n == keys == job.result["records_kept"] + job.result["records_rejected"]
    # Every answer a worker received is in the ledger, those received just before the kill included (a
    # paid call is written with its cache entry): only the calls in flight at the kill, at most one
    # concurrency window (8), were answered by the teacher and never counted.
    assert 0 <= final["completions"] - paid <= 8, (final["completions"], paid)
    assert job.result["cost_usd"] == pytest.approx(ledger_cost)
    repeated = {h: c for h, c in final["completed_by_hash"].items() if c > 1}
    # Only calls in flight at the instant of the kill (answered but never received) may be asked again;
    # every call answered before it came back from the cache.
    assert len(repeated) <= 8, repeated
    assert at_kill["completions"] > 3 * len(repeated)
    assert replayed >= at_kill["completions"] - len(repeated) - 8


def test_evol_job_records_lineage_operation_round_and_eliminations(committed_pg, shared_data, teacher):
    dataset_id, curator = seeded_dataset(committed_pg, shared_data)
    job_id = create_job(
        committed_pg,
        curator,
        dataset_id,
        "evol",
        {"teacher": "fake", "rounds": 2, "max_items": 20, "scope": {"source": "seed"}},
    )
    assert run_job(job_id) == "succeeded", job_row(committed_pg, job_id).error
    job = job_row(committed_pg, job_id)
    with Session(committed_pg) as db:
        rows = db.scalars(select(Record).where(Record.job_id == job_id)).all()
        seed_ids = set(
            db.scalars(select(Record.id).where(Record.dataset_id == dataset_id, Record.source == "seed"))
        )
    by_id = {r.id: r for r in rows}
    kept = [r for r in rows if r.status == "pending"]
    assert kept and len(rows) == job.result["records_kept"] + job.result["records_rejected"]
    for r in rows:
        assert r.parent_id in seed_ids or r.parent_id in by_id, "every evolution points to its parent"
        assert r.source.startswith("evol") and r.meta.get("operation") and "round" in r.meta
    second_round = [r for r in kept if r.meta["round"] == 1]
    assert all(r.parent_id in by_id or r.parent_id in seed_ids for r in second_round)
    for r in rows:
        if r.status == "filtered":
            assert r.reason


def test_judge_job_scores_filters_below_threshold_and_never_invents_a_score(
    committed_pg, shared_data, teacher
):
    dataset_id, curator = seeded_dataset(committed_pg, shared_data)
    job_id = create_job(committed_pg, curator, dataset_id, "judge", {"teacher": "fake", "threshold": 4.0})
    assert run_job(job_id) == "succeeded", job_row(committed_pg, job_id).error
    job = job_row(committed_pg, job_id)
    with Session(committed_pg) as db:
        rows = db.scalars(select(Record).where(Record.dataset_id == dataset_id)).all()
    assert all("judge" in r.meta for r in rows)
    for r in rows:
        judged = r.meta["judge"]
        if judged["status"] == "unscored":
            assert r.judge_score is None and judged["score"] is None
        else:
            assert 1 <= r.judge_score <= 5 and judged["rationale"] is not None
            assert (r.status == "filtered") == (r.judge_score < 4.0)
            if r.status == "filtered":
                assert r.reason == "judge_below"
    assert (
        job.counters["kept"] + job.counters["below_threshold"] + job.counters["unscored"] == len(rows) == 175
    )


def test_cost_estimate_dry_runs_the_jobs_own_first_prompts(client, db, shared_data, teacher):
    from tests.factories import token_for

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
    body = {
        "dataset_id": dataset.id,
        "kind": "self_instruct",
        "params": {"teacher": "fake", "target": 300},
        "sample_prompts": 3,
    }
    resp = client.post("/api/v1/generation/estimate", json=body, headers=token_for(db, curator))
    assert resp.status_code == 200, resp.text
    est = resp.json()
    assert est["sampled_calls"] == 3 and est["total_calls"] == 700
    assert est["estimated_cost_usd"] == pytest.approx(est["cost_per_call_usd"] * 700)
    assert teacher.stats()["completions"] == 3
    again = client.post("/api/v1/generation/estimate", json=body, headers=token_for(db, curator))
    assert (
        again.json()["sampled_calls"] == 3 and teacher.stats()["completions"] == 3
    )  # answered from the cache


def test_budget_stops_the_job_cleanly(committed_pg, shared_data, teacher):
    dataset_id, curator = seeded_dataset(committed_pg, shared_data)
    job_id = create_job(
        committed_pg,
        curator,
        dataset_id,
        "self_instruct",
        {"teacher": "fake", "target": 500, "batch_size": 4, "budget_usd": 0.01},
    )
    assert run_job(job_id) == "succeeded"
    job = job_row(committed_pg, job_id)
    assert job.result["stop_reason"] == "budget" and job.result["kept_tasks"] < 500
    assert job.cost_usd <= 0.01 + 1e-9
