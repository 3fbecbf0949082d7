from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class TrainingRunCreate(BaseModel):
    snapshot_id: int
    base_model: str = Field(
        description="A folder under IF_MODELS_DIR (relative), holding a Hugging Face model."
    )
    method: Literal["lora", "qlora", "dora", "adalora", "ia3", "prefix", "prompt", "bitfit"] = "lora"
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict, description="Any TrainConfig field (see docs/training.md), e.g. lr, epochs, r."
    )


class TrainingJobParams(BaseModel):
    """Parameters of the `train` job (created by POST /training-runs, not by hand)."""

    run_id: int


class MetricRead(BaseModel):
    step: int
    values: dict[str, Any]


class TrainingRunRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    project_id: int
    snapshot_id: int
    job_id: int
    base_model: str
    method: str
    config: dict[str, Any]
    code_version: str
    summary: dict[str, Any]
    created_at: datetime
    status: str = ""
    error: str | None = None
    progress_done: int = 0
    progress_total: int | None = None


class TrainingRunDetail(TrainingRunRead):
    metrics: list[MetricRead] = Field(default_factory=list)


class ArtifactRead(BaseModel):
    path: str
    size: int
