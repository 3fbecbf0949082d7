"""Push a snapshot to the Hugging Face Hub (or a Hub-compatible endpoint) as a dataset repository.

The API only queues a `hub_push` job: the upload is network I/O of unknown length, so it runs on a worker.
The job's params name the snapshot and the repository, never the token: the worker reads IF_HUB_TOKEN from
its own settings, and any error text is scrubbed of it before it is stored as the job's error.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.auth.models import Role, User
from app.config import get_settings
from app.errors import DomainError, Invalid, NotFound
from app.jobs import service as jobs
from app.jobs.context import JobContext
from app.jobs.models import Job
from app.snapshots.models import Snapshot
from app.snapshots.schemas import HubPush, HubPushParams
from app.snapshots.service import bundle_files, require_snapshot


class HubPushFailed(DomainError):
    """The Hub refused or failed. A domain error, so the job shows what the Hub said (no token in it)."""

    status_code = 502


def request_push(*, db: Session, user: User, snapshot_id: int, body: HubPush) -> Job:
    """Queue a hub_push job for a curator of the snapshot's dataset, when an admin configured a token."""
    snap = require_snapshot(db=db, user=user, snapshot_id=snapshot_id, min_role=Role.curator.value)
    if get_settings().hub_token is None:
        raise Invalid("no Hub token is configured: an admin sets IF_HUB_TOKEN (see docs/hub.md)", field="hub")
    params = HubPushParams(snapshot_id=snap.id, **body.model_dump())
    return jobs.create_job(
        db=db,
        user=user,
        kind="hub_push",
        project_id=None,
        dataset_id=snap.dataset_id,
        params=params.model_dump(mode="json"),
        internal=True,
    )


def run_hub_push_job(ctx: JobContext) -> None:
    params = HubPushParams.model_validate(ctx.params)
    settings = get_settings()
    if settings.hub_token is None:
        raise Invalid("no Hub token is configured on this worker (IF_HUB_TOKEN)", field="hub")
    with ctx.session() as db:
        snap = db.get(Snapshot, params.snapshot_id)
        if snap is None or snap.dataset_id != ctx.dataset:
            raise NotFound(f"snapshot {params.snapshot_id} not found")
        files = bundle_files(
            db, snap, fmt=params.format, val_fraction=params.val_fraction, seed=params.seed, parquet=True
        )
        message = f"InstructForge snapshot #{snap.id} {snap.name} ({snap.content_hash[:12]})"
    ctx.progress(0, len(files))
    ctx.check_cancel()
    commit = _upload(settings.hub_endpoint, settings.hub_token.get_secret_value(), params, files, message)
    ctx.progress(len(files), len(files), counters={"files": len(files)})
    ctx.set_result({"repo_id": params.repo_id, "files": sorted(files), **commit})


def _upload(
    endpoint: str, token: str, params: HubPushParams, files: dict[str, bytes], message: str
) -> dict[str, Any]:
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(params.repo_id, repo_type="dataset", private=params.private, exist_ok=True)
        info = api.create_commit(
            params.repo_id,
            repo_type="dataset",
            operations=[
                CommitOperationAdd(path_in_repo=p, path_or_fileobj=data) for p, data in files.items()
            ],
            commit_message=message,
        )
    except Exception as exc:
        # Some HTTP errors quote the request; the token must not reach the job's stored error or the logs.
        raise HubPushFailed(f"{type(exc).__name__}: {exc}".replace(token, "***")) from None
    return {"commit_url": str(info.commit_url), "commit_oid": str(info.oid), "repo_url": str(info.repo_url)}
