from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter

from app.datasets import service
from app.datasets.models import Dataset
from app.datasets.schemas import DatasetCreate, DatasetRead, DatasetStats, DatasetUpdate
from app.deps import CurrentUser, SessionDep

router = APIRouter(tags=["datasets"])


@router.get("/projects/{project_id}/datasets", response_model=list[DatasetRead])
def list_datasets(project_id: int, user: CurrentUser, db: SessionDep) -> Sequence[Dataset]:
    return service.list_datasets(db=db, user=user, project_id=project_id)


@router.post("/projects/{project_id}/datasets", response_model=DatasetRead, status_code=201)
def create_dataset(project_id: int, body: DatasetCreate, user: CurrentUser, db: SessionDep) -> Dataset:
    return service.create_dataset(db=db, user=user, project_id=project_id, **body.model_dump())


@router.get("/datasets/{dataset_id}", response_model=DatasetRead)
def get_dataset(dataset_id: int, user: CurrentUser, db: SessionDep) -> Dataset:
    return service.require_dataset(db=db, user=user, dataset_id=dataset_id)


@router.patch("/datasets/{dataset_id}", response_model=DatasetRead)
def update_dataset(dataset_id: int, body: DatasetUpdate, user: CurrentUser, db: SessionDep) -> Dataset:
    return service.update_dataset(
        db=db, user=user, dataset_id=dataset_id, changes=body.model_dump(exclude_none=True)
    )


@router.get("/datasets/{dataset_id}/stats", response_model=DatasetStats)
def dataset_stats(dataset_id: int, user: CurrentUser, db: SessionDep) -> DatasetStats:
    service.require_dataset(db=db, user=user, dataset_id=dataset_id)
    counts = service.status_counts(db=db, dataset_id=dataset_id)
    return DatasetStats(dataset_id=dataset_id, counts=counts, total=sum(counts.values()))
