"""Jobs on real Celery workers (Redis broker, PostgreSQL): crash safety, cancel, failure reporting."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.imports.service import new_upload_path
from app.jobs import service as jobs
from app.jobs.models import Job
from app.records.models import Record
from tests.conftest import PG_URL
from tests.factories import make_dataset, make_project, make_user
from tests.procs import kill, service_env, start_worker

pytestmark = pytest.mark.slow


def _real_alpaca_lines(shared_data: Path, n: int) -> list[str]:
    base = json.loads((shared_data / "codealpaca" / "code_alpaca_2k.json").read_text())
    return [
        json.dumps(
            {
                "instruction": f"{base[i % len(base)]['instruction']} (variant {i})",
                "input": base[i % len(base)]["input"],
                "output": base[i % len(base)]["output"],
            }
        )
        for i in range(n)
    ]


def _setup(engine, lines: list[str]) -> tuple[int, int]:
    with Session(engine) as db:
        curator = make_user(db, "curator")
        dataset = make_dataset(db, make_project(db, (curator, "curator")))
        upload = new_upload_path(".jsonl")
        upload.write_text("\n".join(lines) + "\n")
        job = jobs.create_job(
            db=db,
            user=curator,
            kind="import",
            project_id=None,
            dataset_id=dataset.id,
            params={"upload": upload.name, "format": "alpaca"},
            enqueue=False,
        )
        db.commit()
        return job.id, dataset.id


def _send(redis_url: str, job_id: int) -> None:
    app = Celery(broker=redis_url)
    app.send_task("workers.tasks.run_job_task", args=[job_id], queue="default")
    app.close()


def _job(engine, job_id: int) -> Job:
    with Session(engine) as db:
        job = db.get(Job, job_id)
        assert job is not None
        db.expunge(job)
        return job


def _wait(engine, job_id: int, predicate, timeout: float, what: str) -> Job:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = _job(engine, job_id)
        if predicate(job):
            return job
        time.sleep(0.05)
    raise AssertionError(
        f"timed out waiting for {what}: {job.status} {job.progress_done}/{job.progress_total}"
    )


def _env(redis_url: str) -> dict[str, str]:
    return service_env(
        database_url=PG_URL,
        broker_url=redis_url,
        data_dir=Path(os.environ["IF_DATA_DIR"]),
        IF_JOB_LEASE_SECONDS="3",
        IF_REAPER_INTERVAL_SECONDS="1",
        IF_BROKER_VISIBILITY_TIMEOUT="4",
        IF_IMPORT_BATCH_SIZE="1000",
    )


def test_sigkilled_worker_mid_import_loses_and_duplicates_nothing(
    committed_pg, redis_url, shared_data, tmp_path
):
    n = 60_000
    job_id, dataset_id = _setup(committed_pg, _real_alpaca_lines(shared_data, n))
    env = _env(redis_url)
    _send(redis_url, job_id)
    first = start_worker(env, tmp_path / "worker1.log")
    try:
        mid = _wait(
            committed_pg,
            job_id,
            lambda j: j.progress_total and 0 < j.progress_done < n,
            120,
            "the import to be half-way",
        )
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        kill(first)
    assert mid.status == "running"
    with Session(committed_pg) as db:
        partial = db.scalar(select(func.count()).where(Record.dataset_id == dataset_id))
    assert 0 < partial < n, "the kill must land in the middle of the import"

    second = start_worker(env, tmp_path / "worker2.log")
    try:
        done = _wait(committed_pg, job_id, lambda j: j.status in ("succeeded", "failed"), 180, "redelivery")
    finally:
        kill(second)
    assert done.status == "succeeded", done.error
    assert done.attempts >= 2
    with Session(committed_pg) as db:
        count = db.scalar(select(func.count()).where(Record.dataset_id == dataset_id))
        keys = db.scalar(
            select(func.count(func.distinct(Record.gen_key))).where(Record.dataset_id == dataset_id)
        )
        instructions = db.scalar(
            select(func.count(func.distinct(Record.instruction))).where(Record.dataset_id == dataset_id)
        )
    assert count == keys == instructions == n
    assert done.result["imported"] == n


def test_import_job_with_a_bad_line_fails_naming_it_and_writes_nothing(
    committed_pg, redis_url, shared_data, tmp_path
):
    lines = _real_alpaca_lines(shared_data, 3000)
    lines[1234] = '{"instruction": "ok", "output": 42}'
    job_id, dataset_id = _setup(committed_pg, lines)
    _send(redis_url, job_id)
    worker = start_worker(_env(redis_url), tmp_path / "worker.log")
    try:
        job = _wait(committed_pg, job_id, lambda j: j.status in ("succeeded", "failed"), 60, "the job to end")
    finally:
        kill(worker)
    assert job.status == "failed"
    assert "line 1235" in job.error and "output" in job.error
    with Session(committed_pg) as db:
        assert db.scalar(select(func.count()).where(Record.dataset_id == dataset_id)) == 0


def test_cancel_stops_a_running_job_at_its_next_checkpoint(committed_pg, redis_url, shared_data, tmp_path):
    n = 60_000
    job_id, _ = _setup(committed_pg, _real_alpaca_lines(shared_data, n))
    _send(redis_url, job_id)
    worker = start_worker(_env(redis_url), tmp_path / "worker.log")
    try:
        _wait(committed_pg, job_id, lambda j: j.progress_done > 0, 120, "the job to start writing")
        with Session(committed_pg) as db:
            job = db.get(Job, job_id)
            job.cancel_requested = True
            db.commit()
        job = _wait(committed_pg, job_id, lambda j: j.status != "running", 60, "the cancel")
    finally:
        kill(worker)
    assert job.status == "cancelled" and job.progress_done < n
