"""Factories for test data, through the services (the same code paths the API uses)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from app.auth import service as auth_service
from app.auth.models import User
from app.datasets.models import Dataset
from app.jobs.models import Job
from app.projects.models import Project, ProjectMember
from app.records.models import Record

_seq = itertools.count(1)
PASSWORD = "correct horse battery"


def make_user(db: Session, role: str = "annotator", username: str | None = None) -> User:
    return auth_service.create_user(
        db=db, username=username or f"{role}{next(_seq)}", password=PASSWORD, role=role
    )


def token_for(db: Session, user: User) -> dict[str, str]:
    _, plain = auth_service.issue_token(db=db, user=user, name="test")
    return {"Authorization": f"Bearer {plain}"}


def make_project(db: Session, *members: tuple[User, str], name: str | None = None) -> Project:
    project = Project(name=name or f"project-{next(_seq)}", description="")
    db.add(project)
    db.flush()
    for user, role in members:
        db.add(ProjectMember(project_id=project.id, user_id=user.id, role=role))
    db.flush()
    return project


def make_dataset(db: Session, project: Project, language: str = "en", name: str | None = None) -> Dataset:
    dataset = Dataset(project_id=project.id, name=name or f"dataset-{next(_seq)}", language=language)
    db.add(dataset)
    db.flush()
    return dataset


def make_records(db: Session, dataset: Dataset, n: int, **overrides: Any) -> list[Record]:
    records = []
    for i in range(n):
        fields: dict[str, Any] = {
            "instruction": f"Instruction number {i}",
            "input": "",
            "output": f"Output {i}",
            "source": "human",
        }
        fields.update(overrides)
        records.append(Record(dataset_id=dataset.id, **fields))
    db.add_all(records)
    db.flush()
    return records


# --- committed data, for tests that run jobs in the real runner -------------------------------------------


def seeded_dataset(engine: Engine, shared_data: Path, language: str = "en") -> tuple[int, User]:
    """A curator's dataset holding the real Self-Instruct seed tasks (BELLE's for zh), committed."""
    from app.imports.service import parse_file, write_records

    seeds = shared_data / (
        "belle/zh_seed_tasks.json" if language == "zh" else "self-instruct/seed_tasks.jsonl"
    )
    with Session(engine) as db:
        curator = make_user(db, "curator")
        dataset = make_dataset(db, make_project(db, (curator, "curator")), language=language)
        parsed, _, fmt = parse_file(seeds, fmt="self_instruct", filename=None, skip_bad=False)
        write_records(
            sessions=[db],
            dataset_id=dataset.id,
            records=parsed,
            fmt=fmt,
            key_prefix="seed",
            job_id=None,
            batch_size=1000,
        )
        db.commit()
        db.expunge(curator)
        return dataset.id, curator


def create_job(engine: Engine, user: User, dataset_id: int, kind: str, params: dict[str, Any]) -> int:
    """A job row, committed and not sent to any broker (the test runs it)."""
    from app.jobs import service as jobs

    with Session(engine) as db:
        job = jobs.create_job(
            db=db,
            user=db.merge(user),
            kind=kind,
            project_id=None,
            dataset_id=dataset_id,
            params=params,
            enqueue=False,
        )
        db.commit()
        return job.id


def job_row(engine: Engine, job_id: int) -> Job:
    with Session(engine) as db:
        job = db.get(Job, job_id)
        assert job is not None
        db.expunge(job)
        return job


def run_job_now(engine: Engine, user: User, dataset_id: int, kind: str, params: dict[str, Any]) -> Job:
    """Create a job and run it in this process with the real runner; it must succeed."""
    from workers.runner import run_job

    job_id = create_job(engine, user, dataset_id, kind, params)
    status = run_job(job_id)
    job = job_row(engine, job_id)
    assert status == "succeeded", job.error
    return job
