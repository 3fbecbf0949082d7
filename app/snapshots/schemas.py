from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.records.schemas import RecordFilter

ExportFormat = Literal["alpaca", "alpaca_jsonl", "sharegpt", "openai", "axolotl", "dpo", "dpo_plain"]


class SnapshotCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    filter: RecordFilter = Field(
        default_factory=lambda: RecordFilter(status=["accepted"]),
        description="Which records to freeze; default: the accepted ones.",
    )


class SnapshotRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    dataset_id: int
    name: str
    description: str
    filter: dict[str, Any]
    content_hash: str
    record_count: int
    stats: dict[str, Any]
    created_by: int | None
    created_at: datetime


class SnapshotDiff(BaseModel):
    added: list[int]
    removed: list[int]
    changed: list[int]
    unchanged: int


# A Hub repository id: `owner/name` (letters, digits, `-`, `_`, `.`), as the Hub accepts it.
HUB_REPO_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$"


class HubPush(BaseModel):
    """What to push. The token is not here: it is the operator's IF_HUB_TOKEN, read by the worker only."""

    repo_id: str = Field(pattern=HUB_REPO_ID, description="The dataset repository, `owner/name`.")
    private: bool = Field(
        True, description="Create the repository private (an existing one is left as it is)."
    )
    format: ExportFormat = Field("openai", description="Row format of the Parquet files.")
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    seed: int = 0


class HubPushParams(HubPush):
    """The hub_push job's params: the request plus the snapshot."""

    snapshot_id: int
