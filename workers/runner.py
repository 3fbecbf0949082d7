"""Runs one job: claim a lease, heartbeat, call the kind's handler, record the outcome."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update

from app.base import utcnow
from app.config import get_settings
from app.db import get_sessionmaker
from app.errors import DomainError
from app.jobs.context import JobCancelled, JobContext, JobPaused, JobWaiting, lease_deadline
from app.jobs.models import FINAL_STATUSES, Job, JobStatus
from app.jobs.registry import KINDS

log = logging.getLogger(__name__)
WORKER_NAME = f"{socket.gethostname()}:{os.getpid()}"


def claim(job_id: int) -> JobContext | None:
    """Take the job if nobody holds a live lease on it. Returns None, logging why, when there is nothing to do.

    This one conditional UPDATE is what makes any number of messages for one job harmless: only one
    delivery at a time can win it, and none once the job has finished, been cancelled or paused.
    """
    now = utcnow()
    with get_sessionmaker()() as db:
        result = db.execute(
            update(Job)
            .where(
                Job.id == job_id,
                Job.status.in_((JobStatus.queued.value, JobStatus.running.value)),
                Job.cancel_requested.is_(False),
                or_(Job.lease_until.is_(None), Job.lease_until < now),
            )
            .values(
                status=JobStatus.running.value,
                worker=WORKER_NAME,
                lease_until=lease_deadline(),
                attempts=Job.attempts + 1,
            )
            .execution_options(synchronize_session=False)
        )
        if not result.rowcount:  # type: ignore[attr-defined]
            job = db.get(Job, job_id)
            if job is None:
                # A message from another deployment sharing the broker, or a job deleted with its project.
                log.warning("job %s not run: no such job in this worker's database", job_id)
                return None
            why = _why_not_claimed(job, now)
            if (
                job.cancel_requested
                and job.status == JobStatus.running.value
                and (job.lease_until is None or job.lease_until < now)
            ):
                # Cancelled while its worker was dead: nobody else will ever finish it.
                job.status = JobStatus.cancelled.value
                job.finished_at = now
                why = "it was cancelled while its worker was gone; marked cancelled now"
            db.commit()
            log.info("job %s not run: %s", job_id, why)
            return None
        job = db.get(Job, job_id)
        assert job is not None
        if job.started_at is None:
            job.started_at = now
        db.commit()
        return JobContext(
            job_id=job.id,
            kind=job.kind,
            project_id=job.project_id,
            dataset_id=job.dataset_id,
            params=dict(job.params),
            attempt=job.attempts,
            created_by=job.created_by,
            counters=dict(job.counters or {}),
        )


def _why_not_claimed(job: Job, now: datetime) -> str:
    """Why a delivery of this job does nothing: an extra message (a re-send, a redelivery) ends here."""
    if job.status == JobStatus.paused.value:
        return "it is paused; resuming it sends it again"
    if job.status in FINAL_STATUSES:
        return (
            f"it has already {job.status}" if job.status != JobStatus.cancelled.value else "it was cancelled"
        )
    if job.cancel_requested:
        return "its cancel was requested"
    if job.lease_until is not None and job.lease_until >= now and job.worker is None:
        return f"it waits, holding no worker, until {job.lease_until:%H:%M:%S} UTC"
    if job.lease_until is not None and job.lease_until >= now:
        return f"it is running on {job.worker} under a lease until {job.lease_until:%H:%M:%S} UTC"
    return f"it was {job.status} and changed while this worker tried to claim it"


def _heartbeat(ctx: JobContext, stop: threading.Event) -> None:
    interval = max(1.0, get_settings().job_lease_seconds / 4)
    while not stop.wait(interval):
        try:
            with ctx.session() as db:
                db.execute(
                    update(Job)
                    .where(Job.id == ctx.job_id, Job.worker == WORKER_NAME)
                    .values(lease_until=lease_deadline())
                )
                if db.scalar(select(Job.cancel_requested).where(Job.id == ctx.job_id)):
                    ctx._cancel.set()
        except Exception:  # a transient DB error must not kill the job; the next beat retries
            log.exception("heartbeat for job %s failed", ctx.job_id)


def finish(job_id: int, status: str, error: str | None = None) -> None:
    with get_sessionmaker()() as db:
        db.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(status=status, error=error, finished_at=utcnow(), lease_until=None)
        )
        db.commit()


# What run_job returns for a job that gave its worker back to wait (JobWaiting): it is still `running`.
WAITING = "waiting"


def wait_outside(job_id: int, seconds: float) -> None:
    """Give the worker back while the job waits: it stays `running`, its lease ending when it wants to look
    again, so the reaper re-sends it then (a running job whose lease expired); no worker is held meanwhile.
    Only this worker's own lease is moved: if the job was taken from it (its lease had lapsed), the
    other holder's lease stands."""
    with get_sessionmaker()() as db:
        db.execute(
            update(Job)
            .where(Job.id == job_id, Job.worker == WORKER_NAME, Job.status == JobStatus.running.value)
            # No worker: the job is held by none while it waits (the reaper and the page say so).
            .values(lease_until=utcnow() + timedelta(seconds=max(0.0, seconds)), worker=None)
        )
        db.commit()


def failure_message(job_id: int, exc: Exception) -> str:
    """The failed job's `error`, which every member of its project reads. A domain error says what to fix
    (a bad line of an upload, a dataset gone); any other exception is a fault whose SQL, traceback and file
    paths are for operators: run_job logs them, and the job says where to find them."""
    if isinstance(exc, DomainError):
        return exc.message[:8000]
    return (
        f"the job stopped on an internal error ({type(exc).__name__}); "
        f"an administrator finds the details in the worker's log under job {job_id}"
    )


def run_job(job_id: int, handler: Callable[[JobContext], None] | None = None) -> str | None:
    """Claim and run a job; returns its final status, or None if another worker has it / it is done."""
    ctx = claim(job_id)
    if ctx is None:
        return None
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(ctx, stop), daemon=True, name=f"heartbeat-{job_id}")
    beat.start()
    try:
        (handler or KINDS[ctx.kind].handler_fn())(ctx)
    except JobCancelled:
        finish(job_id, JobStatus.cancelled.value)
        return JobStatus.cancelled.value
    except JobPaused as exc:
        finish(job_id, JobStatus.paused.value, str(exc))
        return JobStatus.paused.value
    except JobWaiting as exc:
        # The heartbeat must be stopped first: a beat after the write below would cut the wait short.
        stop.set()
        beat.join(timeout=5)
        wait_outside(job_id, exc.seconds)
        return WAITING
    except Exception as exc:
        log.exception("job %s failed", job_id)  # the traceback, for operators
        finish(job_id, JobStatus.failed.value, failure_message(job_id, exc))
        return JobStatus.failed.value
    finally:
        stop.set()
        beat.join(timeout=5)
    finish(job_id, JobStatus.succeeded.value)
    return JobStatus.succeeded.value
