"""The worker's entry point for `celery -A workers.celery_app worker`: the app itself is app.jobs.broker."""

from __future__ import annotations

import logging

from app.jobs.broker import celery_app, make_celery

# One INFO line per teacher request would drown the worker's log.
logging.getLogger("httpx").setLevel(logging.WARNING)

__all__ = ["celery_app", "make_celery"]
