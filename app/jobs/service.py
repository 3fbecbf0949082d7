from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.auth.models import Role, User
from app.base import utcnow
from app.datasets.service import require_dataset
from app.db import get_or_404
from app.errors import Invalid, invalid, not_found_as
from app.jobs.models import ACTIVE_STATUSES, Job, JobStatus
from app.jobs.registry import KINDS, load_object
from app.projects.service import require_project
from app.records import service as records
from app.records.schemas import RecordFilter

log = logging.getLogger(__name__)


def create_job(
    *,
    db: Session,
    user: User,
    kind: str,
    project_id: int | None,
    dataset_id: int | None,
    params: dict[str, Any],
    enqueue: bool = True,
    internal: bool = False,
) -> Job:
    """Validate, store and enqueue a job. Only curators and admins start jobs."""
    spec = KINDS.get(kind)
    if spec is None:
        raise Invalid(f"unknown job kind {kind!r}; known: {', '.join(sorted(KINDS))}", field="kind")
    if spec.internal and not internal:
        raise Invalid(f"{kind} jobs are created through their own endpoint, not POST /jobs", field="kind")
    if dataset_id is not None:
        dataset = require_dataset(db=db, user=user, dataset_id=dataset_id, min_role=Role.curator.value)
        project_id = dataset.project_id
    elif spec.needs_dataset:
        raise Invalid(f"a {kind} job needs dataset_id", field="dataset_id")
    if project_id is None:
        raise Invalid("project_id or dataset_id is required", field="project_id")
    require_project(db=db, user=user, project_id=project_id, min_role=Role.curator.value)
    try:
        validated = spec.params_cls().model_validate(params)
    except ValidationError as exc:
        raise invalid(exc.errors(), prefix="params") from exc
    if spec.validator:
        load_object(spec.validator)(validated.model_dump(mode="json"))
    job = Job(
        project_id=project_id,
        dataset_id=dataset_id,
        kind=kind,
        queue=spec.queue,
        params=validated.model_dump(mode="json"),
        created_by=user.id,
    )
    db.add(job)
    db.flush()
    audit.record(
        db=db,
        user_id=user.id,
        action="job.create",
        entity_type="job",
        entity_id=job.id,
        project_id=project_id,
        detail={"kind": kind},
    )
    if enqueue:
        # Commit first: a worker must never receive the id of a row it cannot see yet.
        db.commit()
        send(db=db, job=job)
    return job


def human_decided_in_scope(
    *, db: Session, user: User, dataset_id: int, kind: str, params: dict[str, Any]
) -> int:
    """How many records a person decided in the job's scope: what its `override_human` would let it change."""
    fields = KINDS[kind].params_cls().model_fields
    if "override_human" not in fields:
        return 0
    try:
        raw = params.get("scope")
        scope = (
            RecordFilter.model_validate(raw)
            if raw
            else fields["scope"].get_default(call_default_factory=True)
        )
    except ValidationError as exc:
        raise invalid(exc.errors(), prefix="params.scope") from exc
    flt = scope.model_copy(update={"human_decided": True})
    return records.count_records(db=db, user=user, dataset_id=dataset_id, flt=flt)


def send(*, db: Session, job: Job) -> None:
    """Put the job on its Celery queue. A failure leaves it queued; the workers' reaper sends it again.

    `enqueued_at` gets the send time stamped on the message: the reaper compares the two to tell a lost
    message from one waiting in the queue (app/jobs/delivery.py).
    """
    from app.jobs.broker import celery_app
    from app.jobs.delivery import send_job

    try:
        sent_at = send_job(celery_app, job_id=job.id, queue=job.queue)
    except Exception:
        log.exception("could not enqueue job %s; the reaper will retry", job.id)
        return
    job.enqueued_at = sent_at
    db.commit()


def get_job(*, db: Session, user: User, job_id: int) -> Job:
    job = get_or_404(db, Job, job_id, f"job {job_id}")
    with not_found_as(f"job {job_id}"):
        require_project(db=db, user=user, project_id=job.project_id)
    return job


def list_jobs(
    *,
    db: Session,
    user: User,
    project_id: int | None,
    dataset_id: int | None,
    status: str | None,
    kind: str | None,
    limit: int = 100,
) -> Sequence[Job]:
    query = select(Job).order_by(Job.id.desc()).limit(max(1, min(limit, 500)))
    if dataset_id is not None:
        dataset = require_dataset(db=db, user=user, dataset_id=dataset_id)
        query = query.where(Job.dataset_id == dataset.id)
    if project_id is not None:
        require_project(db=db, user=user, project_id=project_id)
        query = query.where(Job.project_id == project_id)
    elif user.role != Role.admin.value:
        from app.projects.models import ProjectMember

        query = query.where(
            Job.project_id.in_(select(ProjectMember.project_id).where(ProjectMember.user_id == user.id))
        )
    if status:
        query = query.where(Job.status == status)
    if kind:
        query = query.where(Job.kind == kind)
    return db.scalars(query).all()


def cancel_job(*, db: Session, user: User, job_id: int) -> Job:
    """Cancel: a queued job is cancelled at once; a running one stops at its next checkpoint."""
    job = get_job(db=db, user=user, job_id=job_id)
    require_project(db=db, user=user, project_id=job.project_id, min_role=Role.curator.value)
    if job.status in ACTIVE_STATUSES or job.status == JobStatus.paused.value:
        job.cancel_requested = True
        if job.status != JobStatus.running.value:
            job.status = JobStatus.cancelled.value
            job.finished_at = utcnow()
        audit.record(
            db=db,
            user_id=user.id,
            action="job.cancel",
            entity_type="job",
            entity_id=job.id,
            project_id=job.project_id,
        )
    return job


def resume_job(*, db: Session, user: User, job_id: int) -> Job:
    """Re-queue a paused or failed job; it resumes from its checkpoints and cached teacher calls."""
    job = get_job(db=db, user=user, job_id=job_id)
    require_project(db=db, user=user, project_id=job.project_id, min_role=Role.curator.value)
    if job.status not in (JobStatus.paused.value, JobStatus.failed.value):
        raise Invalid(f"job {job_id} is {job.status}; only paused or failed jobs can be resumed")
    job.status = JobStatus.queued.value
    job.error = None
    job.finished_at = None
    job.lease_until = None
    audit.record(
        db=db,
        user_id=user.id,
        action="job.resume",
        entity_type="job",
        entity_id=job.id,
        project_id=job.project_id,
    )
    db.commit()
    send(db=db, job=job)
    return job
