"""Thin Celery tasks: they take ids and hand over to the runner."""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta
from typing import Any

from celery import Celery
from celery.signals import worker_ready, worker_shutting_down
from sqlalchemy import ColumnElement, and_, or_, select, update

from app.base import utcnow
from app.config import get_settings
from app.db import get_sessionmaker
from app.jobs.delivery import oldest_waiting, send_job
from app.jobs.models import Job, JobStatus
from workers.celery_app import celery_app
from workers.runner import run_job

log = logging.getLogger(__name__)
_stop_reaper = threading.Event()


@celery_app.task(name="workers.tasks.run_job_task", acks_late=True, reject_on_worker_lost=True)
def run_job_task(job_id: int) -> str | None:
    return run_job(int(job_id))


def _waiting(now: datetime) -> ColumnElement[bool]:
    """Jobs that wait for a worker: queued, or running under a lease that expired (their worker died, or
    the job gave its worker back to wait: app.jobs.context.JobWaiting).

    A running one whose cancel was requested is sent too: nobody else will ever end it, and the worker
    that gets it records it cancelled without running it (workers.runner.claim).
    """
    return or_(
        and_(Job.cancel_requested.is_(False), Job.status == JobStatus.queued.value),
        and_(Job.status == JobStatus.running.value, Job.lease_until < now),
    )


def _unsent() -> ColumnElement[bool]:
    """No message was sent since the job started waiting: never sent, or not since its lease expired."""
    return or_(
        Job.enqueued_at.is_(None),
        and_(Job.status == JobStatus.running.value, Job.enqueued_at <= Job.lease_until),
    )


def reap_once(queues: set[str], *, app: Celery = celery_app, now: datetime | None = None) -> list[int]:
    """Send again the jobs of `queues` that wait for a worker but have no message that will reach one.

    That is a job never sent (its sender failed), one whose worker died (its lease expired), and one whose
    last message, sent over a lease period ago, is no longer in the broker's queue (app.jobs.delivery: how
    that is told from a job waiting behind a backlog, which is left alone). `now` is for tests.
    """
    now = now or utcnow()
    resent = []
    for queue in sorted(queues):
        lost = Job.enqueued_at < lost_before(app, queue, now)
        with get_sessionmaker()() as db:
            rows = db.execute(
                select(Job.id, Job.enqueued_at, _unsent().label("unsent"), Job.worker)
                .where(Job.queue == queue, _waiting(now), or_(_unsent(), lost))
                .order_by(Job.id)
            ).all()
        for job_id, enqueued_at, unsent, worker in rows:
            stamp = utcnow()
            # Only if it still waits for the same reason: another worker's reaper may have sent it just now.
            with get_sessionmaker()() as db:
                taken = db.execute(
                    update(Job)
                    .where(Job.id == job_id, _waiting(now), or_(_unsent(), lost))
                    .values(enqueued_at=stamp)
                    .execution_options(synchronize_session=False)
                )
                db.commit()
            if not taken.rowcount:  # type: ignore[attr-defined]
                continue
            # Should the send fail, the job looks sent: a lease period on it is found lost and sent again.
            send_job(app, job_id=job_id, queue=queue, sent_at=stamp)
            if unsent and enqueued_at and worker is None:
                why = "its wait is over (it gave its worker back to wait, app.jobs.context.JobWaiting)"
            elif unsent:
                why = "its worker is gone" if enqueued_at else "it was never sent"
            else:
                why = f"its message of {enqueued_at:%H:%M:%S} UTC was lost: queue {queue} holds none that old"
            log.warning("job %s sent again: %s", job_id, why)
            resent.append(job_id)
    return resent


def lost_before(app: Celery, queue: str, now: datetime) -> datetime:
    """A waiting job whose last message was sent before this has no message in `queue` any more.

    Its message was sent over a lease period ago (time enough for a worker to take and claim it), and
    before the oldest message still waiting: the queue is first in, first out (app.jobs.delivery).
    """
    oldest = oldest_waiting(app, queue)
    grace = now - timedelta(seconds=get_settings().job_lease_seconds)
    return grace if oldest is None else min(grace, oldest)


def _reaper_loop(queues: set[str]) -> None:
    interval = get_settings().reaper_interval_seconds
    while not _stop_reaper.wait(interval):
        try:
            reap_once(queues)
        except Exception:
            log.exception("reaper pass failed")
            time.sleep(interval)


@worker_ready.connect
def _start_reaper(sender: Any = None, **_: Any) -> None:
    queues = {q.name for q in sender.app.amqp.queues.consume_from.values()} if sender else {"default"}
    threading.Thread(target=_reaper_loop, args=(queues,), daemon=True, name="job-reaper").start()


@worker_shutting_down.connect
def _stop(**_: Any) -> None:
    _stop_reaper.set()
