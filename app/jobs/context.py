"""The job contract: what a job handler gets (JobContext) and the two ways it stops early.

Handlers live with their domain (app/curation/jobs.py, app/generation/jobs.py, ...) and depend on this
module only; `workers/` claims a job, keeps its lease alive and records how it ended (workers/runner.py).
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.base import utcnow
from app.config import get_settings
from app.db import session_scope
from app.errors import Invalid
from app.jobs.models import Job


class JobCancelled(Exception):
    """Raised inside a handler at a checkpoint when the job was cancelled."""


class JobPaused(Exception):
    """Raised by a handler that must stop and wait for a person (teacher down, budget reached)."""


class JobWaiting(Exception):
    """Raised by a handler whose work is being done elsewhere (a provider's batch): come back in `seconds`.

    The runner releases the worker at once and keeps the job `running` under a lease that ends when the
    handler wants to look again; the workers' reaper then sends it again, as it does for any running job
    whose lease expired (workers/tasks.py). Nothing but the database holds the wait, so it survives
    worker and API restarts, and the handler must keep in its checkpoint what it needs to resume.
    """

    def __init__(self, seconds: float, why: str = "") -> None:
        super().__init__(why or f"waiting {seconds:.0f}s")
        self.seconds = seconds


@dataclass
class JobContext:
    """What a handler gets: ids and params, sessions, progress and cancellation. Never ORM objects."""

    job_id: int
    kind: str
    project_id: int
    dataset_id: int | None
    params: dict[str, Any]
    attempt: int
    created_by: int | None
    _cancel: threading.Event = field(default_factory=threading.Event)
    counters: dict[str, Any] = field(default_factory=dict)

    def session(self) -> AbstractContextManager[Session]:
        """A short unit of work (app.db.session_scope): handlers checkpoint in many of these."""
        return session_scope()

    @property
    def dataset(self) -> int:
        """The dataset of a dataset-scoped job (every kind but training)."""
        if self.dataset_id is None:
            raise Invalid(f"job {self.job_id} ({self.kind}) has no dataset")
        return self.dataset_id

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check_cancel(self) -> None:
        if self._cancel.is_set():
            raise JobCancelled()

    def progress(
        self,
        done: int,
        total: int | None = None,
        *,
        counters: dict[str, Any] | None = None,
        usage: dict[str, float] | None = None,
    ) -> None:
        """Write progress (and counters/usage totals) to the job row in its own short transaction."""
        values: dict[str, Any] = {"progress_done": done, "lease_until": lease_deadline()}
        if total is not None:
            values["progress_total"] = total
        if counters is not None:
            self.counters = dict(counters)
            values["counters"] = self.counters
        if usage:
            values.update(usage)
        with self.session() as db:
            db.execute(update(Job).where(Job.id == self.job_id).values(**values))
            flag = db.scalar(select(Job.cancel_requested).where(Job.id == self.job_id))
        if flag:
            self._cancel.set()
        self.check_cancel()

    def set_result(self, result: dict[str, Any]) -> None:
        with self.session() as db:
            db.execute(update(Job).where(Job.id == self.job_id).values(result=result))


def lease_deadline() -> datetime:
    return utcnow() + timedelta(seconds=get_settings().job_lease_seconds)
