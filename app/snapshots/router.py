from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from app.deps import CurrentUser, SessionDep
from app.jobs.models import Job
from app.jobs.schemas import JobRead
from app.snapshots import hub, service
from app.snapshots.models import Snapshot
from app.snapshots.schemas import ExportFormat, HubPush, SnapshotCreate, SnapshotDiff, SnapshotRead

router = APIRouter(tags=["snapshots"])


@router.post("/datasets/{dataset_id}/snapshots", response_model=SnapshotRead, status_code=201)
def create_snapshot(dataset_id: int, body: SnapshotCreate, user: CurrentUser, db: SessionDep) -> Snapshot:
    """Freeze the records matching the filter (default: accepted) as an immutable, hashed snapshot."""
    return service.create_snapshot(
        db=db, user=user, dataset_id=dataset_id, name=body.name, description=body.description, flt=body.filter
    )


@router.get("/datasets/{dataset_id}/snapshots", response_model=list[SnapshotRead])
def list_snapshots(dataset_id: int, user: CurrentUser, db: SessionDep) -> Sequence[Snapshot]:
    return service.list_snapshots(db=db, user=user, dataset_id=dataset_id)


@router.get("/snapshots/{snapshot_id}", response_model=SnapshotRead)
def get_snapshot(snapshot_id: int, user: CurrentUser, db: SessionDep) -> Snapshot:
    return service.require_snapshot(db=db, user=user, snapshot_id=snapshot_id)


@router.get("/snapshots/{a_id}/diff/{b_id}", response_model=SnapshotDiff)
def diff_snapshots(a_id: int, b_id: int, user: CurrentUser, db: SessionDep) -> SnapshotDiff:
    return SnapshotDiff.model_validate(service.diff(db=db, user=user, a_id=a_id, b_id=b_id))


@router.get("/snapshots/{snapshot_id}/export", response_class=FileResponse)
def export_snapshot(
    snapshot_id: int,
    user: CurrentUser,
    db: SessionDep,
    format: ExportFormat = "alpaca",
    val_fraction: Annotated[float, Query(ge=0.0, lt=1.0)] = 0.0,
    seed: int = 0,
    parquet: Annotated[
        bool, Query(description="Parquet files (with ids and provenance), in a bundle")
    ] = False,
    bundle: Annotated[
        bool, Query(description="A zip: data files, README.md card, dataset_info.json")
    ] = False,
) -> FileResponse:
    """Download the snapshot as one JSON/JSONL file (alpaca, ShareGPT, OpenAI/TRL messages, Axolotl
    conversations, DPO pairs); with `val_fraction`, a zip holding a seeded train/validation split; with
    `bundle` or `parquet`, a zip bundle with the dataset card (docs/formats.md)."""
    path, name, media = service.export_snapshot(
        db=db,
        user=user,
        snapshot_id=snapshot_id,
        fmt=format,
        val_fraction=val_fraction,
        seed=seed,
        parquet=parquet,
        bundle=bundle,
    )
    return FileResponse(path, filename=name, media_type=media)


@router.post("/snapshots/{snapshot_id}/hub", response_model=JobRead, status_code=202)
def push_to_hub(snapshot_id: int, body: HubPush, user: CurrentUser, db: SessionDep) -> Job:
    """Queue a job that pushes the snapshot (Parquet + dataset card) to the Hub; needs IF_HUB_TOKEN."""
    return hub.request_push(db=db, user=user, snapshot_id=snapshot_id, body=body)
