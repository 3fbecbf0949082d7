from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class DatasetCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    language: str = Field("en", min_length=2, max_length=16, description="BCP-47-ish code: en, zh, ...")
    description: str = Field("", max_length=10_000)
    guidelines: str = Field("", max_length=50_000)
    settings: dict[str, Any] = Field(default_factory=dict)


class DatasetUpdate(BaseModel):
    name: str | None = Field(None, min_length=1, max_length=200)
    language: str | None = Field(None, min_length=2, max_length=16)
    description: str | None = Field(None, max_length=10_000)
    guidelines: str | None = Field(None, max_length=50_000)
    settings: dict[str, Any] | None = None


class DatasetRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    project_id: int
    name: str
    language: str
    description: str
    guidelines: str
    settings: dict[str, Any]
    created_at: datetime


class DatasetStats(BaseModel):
    dataset_id: int
    counts: dict[str, int]
    total: int
