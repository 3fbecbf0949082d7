from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter

from app.deps import CurrentUser, SessionDep
from app.jobs import service
from app.jobs.models import Job
from app.jobs.registry import KINDS
from app.jobs.schemas import JobCreate, JobKindRead, JobRead

router = APIRouter(tags=["jobs"])


@router.get("/jobs/kinds", response_model=list[JobKindRead])
def job_kinds(user: CurrentUser) -> list[JobKindRead]:
    """Every job kind with the JSON schema of its parameters (defaults included)."""
    return [
        JobKindRead(
            name=k.name,
            queue=k.queue,
            description=k.description,
            params_schema=k.params_cls().model_json_schema(),
        )
        for k in KINDS.values()
    ]


@router.post("/jobs", response_model=JobRead, status_code=202)
def create_job(body: JobCreate, user: CurrentUser, db: SessionDep) -> Job:
    return service.create_job(
        db=db,
        user=user,
        kind=body.kind,
        project_id=body.project_id,
        dataset_id=body.dataset_id,
        params=body.params,
    )


@router.get("/jobs", response_model=list[JobRead])
def list_jobs(
    user: CurrentUser,
    db: SessionDep,
    project_id: int | None = None,
    dataset_id: int | None = None,
    status: str | None = None,
    kind: str | None = None,
    limit: int = 100,
) -> Sequence[Job]:
    return service.list_jobs(
        db=db, user=user, project_id=project_id, dataset_id=dataset_id, status=status, kind=kind, limit=limit
    )


@router.get("/jobs/{job_id}", response_model=JobRead)
def get_job(job_id: int, user: CurrentUser, db: SessionDep) -> Job:
    return service.get_job(db=db, user=user, job_id=job_id)


@router.post("/jobs/{job_id}/cancel", response_model=JobRead)
def cancel_job(job_id: int, user: CurrentUser, db: SessionDep) -> Job:
    return service.cancel_job(db=db, user=user, job_id=job_id)


@router.post("/jobs/{job_id}/resume", response_model=JobRead)
def resume_job(job_id: int, user: CurrentUser, db: SessionDep) -> Job:
    return service.resume_job(db=db, user=user, job_id=job_id)
