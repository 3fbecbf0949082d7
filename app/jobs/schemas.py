from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class JobCreate(BaseModel):
    kind: str = Field(description="Job kind; see GET /api/v1/jobs/kinds.")
    project_id: int | None = None
    dataset_id: int | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class JobRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    project_id: int
    dataset_id: int | None
    kind: str
    queue: str
    params: dict[str, Any]
    status: str
    progress_done: int
    progress_total: int | None
    counters: dict[str, Any]
    result: dict[str, Any]
    error: str | None
    cancel_requested: bool
    attempts: int
    tokens_in: int
    tokens_out: int
    cost_usd: float
    created_by: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobKindRead(BaseModel):
    name: str
    queue: str
    description: str
    params_schema: dict[str, Any]
