"""The Celery application. Queues: `default` (import, curation, generation) and `gpu` (training).

It lives in app/ because the API sends job messages too (app.jobs.service.send); the tasks it runs are in
workers/tasks.py, named by `include`, so importing this module loads no worker code."""

from __future__ import annotations

from celery import Celery
from kombu import Queue  # type: ignore[attr-defined]

from app.config import get_settings


def make_celery(broker_url: str | None = None) -> Celery:
    """The app every process uses; `broker_url` (default: the settings') lets a test reach another broker."""
    settings = get_settings()
    broker = broker_url or settings.resolved_broker_url
    if broker.startswith("sqla+sqlite:///"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = Celery("instructforge", broker=broker, include=["workers.tasks"])
    app.conf.update(
        task_queues=(Queue("default"), Queue("gpu")),  # type: ignore[no-untyped-call]
        task_default_queue="default",
        # Acknowledge after the job ran: a worker killed mid-job leaves the message to be redelivered;
        # jobs write idempotently and claim a lease, so redelivery neither loses nor duplicates work.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        # Redis redelivers unacknowledged messages after this; other transports take no such option.
        broker_transport_options=(
            {"visibility_timeout": settings.broker_visibility_timeout} if broker.startswith("redis") else {}
        ),
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
    )
    return app


celery_app = make_celery()
