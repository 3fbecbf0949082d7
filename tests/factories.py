"""Factories for test data, through the services (the same code paths the API uses)."""

from __future__ import annotations

import itertools
from typing import Any

from sqlalchemy.orm import Session

from app.auth import service as auth_service
from app.auth.models import User
from app.datasets.models import Dataset
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
