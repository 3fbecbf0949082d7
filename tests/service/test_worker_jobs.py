"""Jobs on real Celery workers (Redis broker, PostgreSQL): crash safety, cancel, failure reporting, and
messages lost or delivered twice."""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from celery import Celery
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.base import utcnow
from app.config import get_settings
from app.imports.service import new_upload_path
from app.jobs import service as jobs
from app.jobs.broker import make_celery
from app.jobs.delivery import send_job
from app.jobs.models import Job
from app.records.models import Record
from tests.conftest import PG_URL
from tests.factories import job_row, make_dataset, make_project, make_user
from tests.procs import kill, service_env, start_worker
from workers.runner import run_job
from workers.tasks import reap_once

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


def _wait(engine, job_id: int, predicate, timeout: float, what: str) -> Job:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = job_row(engine, job_id)
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


# --- Messages that get lost, and messages that arrive twice -------------------------------------------


def _wait_log(log: Path, text: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if log.exists() and text in log.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the worker's log after {timeout}s:\n{log.read_text()[-3000:]}")


def _send_stamped(engine, app: Celery, job_id: int) -> None:
    """What app.jobs.service.send does, to the broker `app` reaches."""
    with Session(engine) as db:
        job = db.get(Job, job_id)
        job.enqueued_at = send_job(app, job_id=job_id, queue=job.queue)
        db.commit()


def test_a_job_whose_message_was_lost_is_sent_again_and_runs_within_two_lease_periods(
    committed_pg, redis_url, shared_data, tmp_path
):
    lease = 4
    job_id, _ = _setup(committed_pg, _real_alpaca_lines(shared_data, 300))
    app = make_celery(redis_url)
    _send_stamped(committed_pg, app, job_id)
    redis.Redis.from_url(redis_url).flushdb()  # the broker's database is cleared: the message is gone
    log = tmp_path / "worker.log"
    worker = start_worker({**_env(redis_url), "IF_JOB_LEASE_SECONDS": str(lease)}, log)
    try:
        _wait_log(log, "ready.", 60)
        ready = time.time()
        job = _wait(committed_pg, job_id, lambda j: j.status == "succeeded", 2 * lease, "the lost job to run")
        took = time.time() - ready
    finally:
        kill(worker)
    assert job.result["imported"] == 300 and job.attempts == 1
    assert f"job {job_id} sent again: its message of" in log.read_text()
    assert took < 2 * lease


def test_a_worker_logs_why_it_does_not_run_a_job_it_cannot_claim(
    committed_pg, redis_url, shared_data, tmp_path
):
    lines = _real_alpaca_lines(shared_data, 10)
    done, cancelled, paused, elsewhere = (_setup(committed_pg, lines)[0] for _ in range(4))
    until = utcnow() + timedelta(hours=1)
    with Session(committed_pg) as db:
        for job_id, values in (
            (done, {"status": "succeeded"}),
            (cancelled, {"status": "cancelled", "cancel_requested": True}),
            (paused, {"status": "paused", "error": "teacher down"}),
            (elsewhere, {"status": "running", "worker": "gpu-box:4242", "lease_until": until, "attempts": 1}),
        ):
            db.execute(update(Job).where(Job.id == job_id).values(enqueued_at=utcnow(), **values))
        db.commit()
    unknown = elsewhere + 1000
    for job_id in (done, cancelled, paused, elsewhere, unknown):
        _send(redis_url, job_id)
    log = tmp_path / "worker.log"
    worker = start_worker(_env(redis_url), log)
    try:
        for line in (
            f"job {done} not run: it has already succeeded",
            f"job {cancelled} not run: it was cancelled",
            f"job {paused} not run: it is paused",
            f"job {elsewhere} not run: it is running on gpu-box:4242 under a lease until {until:%H:%M:%S} UTC",
            f"job {unknown} not run: no such job in this worker's database",
        ):
            _wait_log(log, line, 30)
    finally:
        kill(worker)
    after = job_row(committed_pg, elsewhere)
    assert (after.status, after.worker, after.attempts) == ("running", "gpu-box:4242", 1)


def test_a_job_delivered_twice_at_once_runs_once(committed_pg, redis_url, shared_data, tmp_path):
    n = 20_000
    job_id, dataset_id = _setup(committed_pg, _real_alpaca_lines(shared_data, n))
    app = make_celery(redis_url)
    _send_stamped(committed_pg, app, job_id)
    _send_stamped(committed_pg, app, job_id)  # as a re-send of a job whose first message still waits
    env = _env(redis_url)
    logs = [tmp_path / "worker1.log", tmp_path / "worker2.log"]
    workers = [start_worker(env, log) for log in logs]
    try:
        job = _wait(
            committed_pg, job_id, lambda j: j.status in ("succeeded", "failed"), 120, "the job to end"
        )
        deadline = time.time() + 30
        while f"job {job_id} not run: it" not in (text := "".join(log.read_text() for log in logs)):
            assert time.time() < deadline, f"the second delivery left no line:\n{text[-3000:]}"
            time.sleep(0.1)
    finally:
        for worker in workers:
            kill(worker)
    assert job.status == "succeeded" and job.attempts == 1
    assert (
        f"job {job_id} not run: it is running on" in text or f"job {job_id} not run: it has already" in text
    )
    with Session(committed_pg) as db:
        assert db.scalar(select(func.count()).where(Record.dataset_id == dataset_id)) == n


@pytest.fixture(params=["redis", "sqlite"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Celery:
    """The worker's Celery app on each broker we run on (Redis in production, SQLite embedded)."""
    if request.param == "redis":
        return make_celery(request.getfixturevalue("redis_url"))
    return make_celery(f"sqla+sqlite:///{tmp_path / 'broker.db'}")


def _waiting(app: Celery) -> int:
    with app.connection_for_read() as conn:
        return int(conn.default_channel.queue_declare(queue="default", passive=True).message_count)


def test_the_reaper_leaves_a_job_behind_a_backlog_alone_and_resends_one_whose_message_was_lost(
    committed_pg, broker, shared_data
):
    lines = _real_alpaca_lines(shared_data, 10)
    first, second = (_setup(committed_pg, lines)[0] for _ in range(2))
    _send_stamped(committed_pg, broker, first)
    _send_stamped(committed_pg, broker, second)
    # Long after they were sent, with no worker taking anything: a backlog, not a loss.
    after_leases = utcnow() + timedelta(seconds=3 * get_settings().job_lease_seconds)
    assert reap_once({"default"}, app=broker, now=after_leases) == []
    assert _waiting(broker) == 2

    # A worker takes the first message and runs its job; the second job's message is now the oldest.
    with broker.connection_for_read() as conn:
        queue = conn.SimpleQueue("default")
        queue.get(timeout=5).ack()
        queue.close()
    assert run_job(first) == "succeeded"
    assert reap_once({"default"}, app=broker, now=after_leases) == []

    # The broker's queue is purged: the second job's message is lost, and sent again once.
    with broker.connection_for_write() as conn:
        conn.default_channel.queue_purge("default")
    assert reap_once({"default"}, app=broker, now=after_leases) == [second]
    assert reap_once({"default"}, app=broker, now=after_leases) == []
    assert _waiting(broker) == 1

    # Lost again, this time with a newer message waiting: the queue holds nothing as old as it.
    with broker.connection_for_write() as conn:
        conn.default_channel.queue_purge("default")
    _send_stamped(committed_pg, broker, _setup(committed_pg, lines)[0])
    assert reap_once({"default"}, app=broker, now=after_leases) == [second]
    assert _waiting(broker) == 2
