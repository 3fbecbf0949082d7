from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.auth.models import Role, User
from app.base import utcnow
from app.datasets import freshness
from app.datasets.models import Dataset, DatasetStatsCache
from app.db import insert_ignoring
from app.errors import Conflict, NotFound, not_found_as
from app.projects.models import Project
from app.projects.service import require_project
from app.records.models import Record


def prompt_language(language: str) -> Literal["en", "zh"]:
    """The language generation prompts are written in for a dataset's language code: zh (any zh-*) or en."""
    return "zh" if language.startswith("zh") else "en"


def require_dataset(
    *, db: Session, user: User, dataset_id: int, min_role: str = Role.annotator.value
) -> Dataset:
    """Load a dataset the user may act on; 404 for datasets of projects the user is not in."""
    # The project comes in the same query (require_project then finds it in the session): every
    # dataset and record request starts here.
    row = db.execute(
        select(Dataset, Project)
        .join(Project, Project.id == Dataset.project_id)
        .where(Dataset.id == dataset_id)
    ).first()
    if row is None:
        raise NotFound(f"dataset {dataset_id} not found")
    dataset = row[0]
    with not_found_as(f"dataset {dataset_id}"):
        require_project(db=db, user=user, project_id=dataset.project_id, min_role=min_role)
    return dataset


def list_datasets(*, db: Session, user: User, project_id: int) -> Sequence[Dataset]:
    require_project(db=db, user=user, project_id=project_id)
    return db.scalars(select(Dataset).where(Dataset.project_id == project_id).order_by(Dataset.id)).all()


def datasets_by_project(*, db: Session, project_ids: Sequence[int]) -> dict[int, list[Dataset]]:
    """The datasets of each of these projects in id order; a project without any has an empty list."""
    by_project: dict[int, list[Dataset]] = {pid: [] for pid in project_ids}
    for d in db.scalars(select(Dataset).where(Dataset.project_id.in_(project_ids)).order_by(Dataset.id)):
        by_project[d.project_id].append(d)
    return by_project


def dataset_names(*, db: Session, dataset_ids: Iterable[int]) -> dict[int, str]:
    """The names of these datasets, by id."""
    query = select(Dataset.id, Dataset.name).where(Dataset.id.in_(set(dataset_ids)))
    return dict(db.execute(query).tuples().all())


def create_dataset(
    *,
    db: Session,
    user: User,
    project_id: int,
    name: str,
    language: str,
    description: str,
    guidelines: str = "",
    settings: dict[str, Any] | None = None,
) -> Dataset:
    project: Project = require_project(db=db, user=user, project_id=project_id, min_role=Role.curator.value)
    exists = db.scalar(select(Dataset.id).where(Dataset.project_id == project.id, Dataset.name == name))
    if exists is not None:
        raise Conflict(f"dataset {name!r} exists in project {project.id}", field="name")
    dataset = Dataset(
        project_id=project.id,
        name=name,
        language=language,
        description=description,
        guidelines=guidelines,
        settings=settings or {},
        created_by=user.id,
    )
    db.add(dataset)
    db.flush()
    audit.record(
        db=db,
        user_id=user.id,
        action="dataset.create",
        entity_type="dataset",
        entity_id=dataset.id,
        project_id=project.id,
        detail={"name": name},
    )
    return dataset


def update_dataset(*, db: Session, user: User, dataset_id: int, changes: dict[str, Any]) -> Dataset:
    dataset = require_dataset(db=db, user=user, dataset_id=dataset_id, min_role=Role.curator.value)
    name = changes.get("name")
    if name is not None and name != dataset.name:
        taken = db.scalar(
            select(Dataset.id).where(
                Dataset.project_id == dataset.project_id, Dataset.name == name, Dataset.id != dataset.id
            )
        )
        if taken is not None:
            raise Conflict(f"dataset {name!r} exists in project {dataset.project_id}", field="name")
    before = {key: getattr(dataset, key) for key in changes}
    for key, value in changes.items():
        setattr(dataset, key, value)
    audit.record(
        db=db,
        user_id=user.id,
        action="dataset.update",
        entity_type="dataset",
        entity_id=dataset.id,
        project_id=dataset.project_id,
        detail={"fields": sorted(changes)},
        before=before,
        after=changes,
    )
    return dataset


def status_counts(*, db: Session, dataset_id: int) -> dict[str, int]:
    rows = db.execute(
        select(Record.status, func.count()).where(Record.dataset_id == dataset_id).group_by(Record.status)
    ).all()
    return {status: count for status, count in rows}


def cached_stats(
    *, db: Session, dataset_id: int, variant: str, compute: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """`compute()`'s figures for this dataset, from the cache while its stamp is unchanged (see
    app.datasets.freshness: the stamp moves with every committed change to the dataset's records)."""
    current = freshness.stamp(db, dataset_id)
    if current is not None:
        hit = db.scalar(
            select(DatasetStatsCache.stats).where(
                DatasetStatsCache.dataset_id == dataset_id,
                DatasetStatsCache.variant == variant,
                DatasetStatsCache.stamp == current,
            )
        )
        if hit is not None:
            cached: dict[str, Any] = json.loads(hit)
            return cached
    stats = compute()
    if current is not None:
        _store_stats(db, dataset_id=dataset_id, variant=variant, stamp=current, stats=stats)
    return stats


def _store_stats(db: Session, *, dataset_id: int, variant: str, stamp: str, stats: dict[str, Any]) -> None:
    values = {"stamp": stamp, "stats": json.dumps(stats), "computed_at": utcnow()}
    mine = (DatasetStatsCache.dataset_id == dataset_id, DatasetStatsCache.variant == variant)
    changed = db.execute(update(DatasetStatsCache).where(*mine).values(**values))
    if not changed.rowcount:  # type: ignore[attr-defined]
        # Two curators opening the page at once both insert: the second is ignored, neither fails.
        row = {"dataset_id": dataset_id, "variant": variant, **values}
        db.execute(insert_ignoring(db, DatasetStatsCache).values(**row))
