from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.records.schemas import RecordFilter

ExportFormat = Literal["alpaca", "alpaca_jsonl", "sharegpt", "openai"]


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
