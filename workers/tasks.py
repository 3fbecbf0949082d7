"""Thin Celery tasks: they take ids and hand over to the runner."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import Any

from celery.signals import worker_ready, worker_shutting_down
from sqlalchemy import and_, or_, select

from app.base import utcnow
from app.config import get_settings
from app.db import get_sessionmaker
from app.jobs.models import Job, JobStatus
from workers.celery_app import celery_app
from workers.runner import run_job

log = logging.getLogger(__name__)
_stop_reaper = threading.Event()


@celery_app.task(name="workers.tasks.run_job_task", acks_late=True, reject_on_worker_lost=True)
def run_job_task(job_id: int) -> str | None:
    return run_job(int(job_id))


def reap_once(queues: set[str]) -> list[int]:
    """Re-send jobs whose worker died (expired lease) or whose message was never sent."""
    now = utcnow()
    stale_queued = now - timedelta(seconds=max(600, get_settings().job_lease_seconds * 10))
    with get_sessionmaker()() as db:
        jobs = db.scalars(
            select(Job).where(
                Job.queue.in_(queues),
                Job.cancel_requested.is_(False),
                or_(
                    and_(Job.status == JobStatus.running.value, Job.lease_until < now),
                    and_(
                        Job.status == JobStatus.queued.value,
                        or_(Job.enqueued_at.is_(None), Job.enqueued_at < stale_queued),
                    ),
                ),
            )
        ).all()
        resent = []
        for job in jobs:
            if (
                job.status == JobStatus.running.value
                and job.enqueued_at
                and job.lease_until
                and (job.enqueued_at > job.lease_until)
            ):
                continue  # already re-sent since the lease expired; the message is waiting in the queue
            celery_app.send_task("workers.tasks.run_job_task", args=[job.id], queue=job.queue)
            job.enqueued_at = now
            resent.append(job.id)
        db.commit()
    if resent:
        log.warning("re-sent orphaned jobs %s", resent)
    return resent


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
