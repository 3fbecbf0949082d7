from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class TrainingRunCreate(BaseModel):
    snapshot_id: int
    base_model: str = Field(
        description="A folder under IF_MODELS_DIR (relative), holding a Hugging Face model."
    )
    method: Literal["lora", "qlora", "dora", "adalora", "ia3", "prefix", "prompt", "bitfit", "full"] = "lora"
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict, description="Any TrainConfig field (see docs/training.md), e.g. lr, epochs, r."
    )
    objective: Literal["sft", "dpo", "orpo", "kto", "simpo"] = Field(
        "sft",
        description="sft trains on the snapshot's records; dpo, orpo, kto and simpo on its preference pairs "
        "(the snapshot's dpo export), refused when it has none. Knobs such as beta go in hyperparameters "
        "(docs/training.md, Preference training).",
    )
    continue_from: int | None = Field(
        None,
        ge=1,
        description="An earlier succeeded run of this project on the same base model whose adapter this run "
        "trains further (two-stage training: a broad set, then a domain set); the method must train the same "
        "kind of adapter. Shown as the run's continued_from.",
    )
    gpus: int = Field(
        1,
        ge=1,
        le=1024,
        description="GPUs for the run, on one gpu worker (torchrun, one rank per GPU); at most IF_GPUS_PER_WORKER.",
    )
    nodes: int = Field(
        1,
        ge=1,
        le=1024,
        description="Machines: the service launches single-node runs; a multi-node run is exported with "
        "POST /training-runs/export (same body) and started under Slurm or Kubernetes (docs/training.md).",
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
    continued_from: int | None = Field(
        None, description="The run whose adapter this one continued (continue_from), in its lineage."
    )
    status: str = ""
    error: str | None = None
    progress_done: int = 0
    progress_total: int | None = None


class TrainingRunDetail(TrainingRunRead):
    metrics: list[MetricRead] = Field(default_factory=list)


class ArtifactRead(BaseModel):
    path: str
    size: int


class BaseModelRead(BaseModel):
    """A folder under IF_MODELS_DIR as the trainer would load it (app/training/base_models.py)."""

    name: str = Field(description="What base_model takes: the folder, relative to the models directory.")
    ok: bool = Field(description="Whether a training run may use it.")
    reason: str | None = Field(description="Why it is refused; null when ok.")
    model_type: str | None
    architecture: str | None
    parameters: int | None = Field(description="From the safetensors headers; null for .bin-only weights.")
    size_bytes: int
    dtype: str | None
    tokenizer: str | None = Field(description="The tokenizer files found.")
    chat_template: bool
    prompt_format: str = Field(description="What prompt_format=auto uses with this tokenizer.")
    notes: list[str]


class MessageRead(BaseModel):
    role: str
    content: str


class SampleRead(BaseModel):
    step: int | None = Field(
        description="The step whose weights generated it; null in files from before steps."
    )
    prompt: list[MessageRead] = Field(description="The held-out conversation up to the last assistant turn.")
    generation: str
    reference: str | None = Field(description="The snapshot's answer to the same prompt.")


class SamplesRead(BaseModel):
    written: bool = Field(
        description="Whether the trainer has written samples.jsonl (it does once training ends)."
    )
    samples: list[SampleRead]
    skipped_lines: int = Field(0, description="Lines of samples.jsonl that were not a sample (malformed).")
