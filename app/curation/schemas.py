from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from app.records.schemas import RecordFilter

TextField = Literal["task", "instruction", "instruction_input", "record", "prompt"]
OVERRIDE_HELP = (
    "Also change the status of records a person accepted, rejected, edited or rated. Off (the default): "
    "their status stays and the machine's verdict is stored beside it as advice."
)


def _default_scope() -> RecordFilter:
    return RecordFilter(status=["pending", "accepted"])


class DedupParams(BaseModel):
    """Greedy ROUGE-L near-duplicate filter (Self-Instruct's rule), after exact duplicates on normalised text."""

    threshold: float = Field(
        0.7, gt=0.0, le=1.0, description="Keep a record iff its max ROUGE-L to kept ones is <= this."
    )
    field: TextField = Field(
        "task",
        description=(
            "What is compared. task (default): instructions, and the records that share one instruction are "
            "one task's instances, kept or filtered together (never duplicates of each other); "
            "instruction: each record's instruction (a task's 2nd instance is an exact duplicate of its 1st); "
            "instruction_input: instruction + input; record: instruction + input + output; "
            "prompt: the whole user side of a conversation."
        ),
    )
    exact: bool = Field(
        True,
        description=(
            "First mark exact duplicates of normalised text (NFKC, case, spaces); with field=task, of the "
            "whole record."
        ),
    )
    stem: bool = Field(False, description="Porter-stem Latin tokens, as rouge_score's use_stemmer.")
    scope: RecordFilter = Field(
        default_factory=_default_scope,
        description="Which records take part: those a person decided first, then the rest, in id order.",
    )
    override_human: bool = Field(False, description=OVERRIDE_HELP)


class RulesParams(BaseModel):
    """Heuristic quality rules; each rejected record keeps the rule code and the detail."""

    rules: list[str] | None = Field(None, description="Rule codes to run; empty/None = the dataset's or all.")
    params: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per-rule parameter overrides."
    )
    scope: RecordFilter = Field(default_factory=_default_scope)
    override_human: bool = Field(False, description=OVERRIDE_HELP)


class MixSource(BaseModel):
    dataset_id: int
    quota: int | None = Field(None, ge=0, description="Exactly this many records (or all there are).")
    weight: float | None = Field(None, gt=0, description="Share of `total`, relative to the other weights.")
    status: list[str] = Field(default_factory=lambda: ["accepted"])


class MixParams(BaseModel):
    """Mix records of several datasets into this one, then dedup across sources."""

    sources: list[MixSource] = Field(min_length=1)
    total: int | None = Field(None, ge=1, description="Target size when weights are used.")
    seed: int = 0
    dedup_threshold: float | None = Field(
        0.7, description="ROUGE-L threshold across sources; null = exact only."
    )

    @model_validator(mode="after")
    def _quota_or_weight(self) -> MixParams:
        if any(s.weight is not None for s in self.sources) and self.total is None:
            raise ValueError("total is required when sources have weights")
        return self


class ConvertParams(BaseModel):
    """Turn an NLP dataset (CSV, JSONL, JSON, Parquet, Natural Instructions task) into instruction records."""

    upload: str = Field(description="File name under DATA_DIR/uploads (upload it with POST /uploads).")
    templates: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Instruction templates (see docs/curation.md); empty = the task's own for NI files.",
    )
    seed: int = 0
    invert: bool = Field(False, description="Swap roles: e.g. write a question for this answer.")
    limit: int | None = Field(None, ge=1)


class DecontaminateParams(BaseModel):
    """Mark the records that copy prompts of an evaluation set, so a win in an evaluation is not a leak."""

    eval_dataset_id: int | None = Field(
        None, description="The evaluation prompts: a dataset of this project (every record of it)."
    )
    eval_snapshot_id: int | None = Field(
        None, description="Or the evaluation prompts as a snapshot of a dataset of this project."
    )
    ngram: int = Field(
        13,
        ge=3,
        le=64,
        description=(
            "A record sharing a run of this many tokens with an evaluation prompt copies it (words; each "
            "CJK character is a token)."
        ),
    )
    ngram_cjk: int = Field(
        16,
        ge=3,
        le=128,
        description=(
            "The run length for texts mostly in CJK characters, where one token is one character: 13 "
            "characters match shared template phrases (see docs/curation.md)."
        ),
    )
    threshold: float = Field(
        0.8,
        gt=0.0,
        le=1.0,
        description="Or a ROUGE-L of at least this with an evaluation prompt (0.7 flags short look-alikes).",
    )
    field: TextField = Field(
        "instruction_input",
        description="What of each record is compared with the evaluation prompts (see dedup's field).",
    )
    scope: RecordFilter = Field(default_factory=_default_scope)
    override_human: bool = Field(False, description=OVERRIDE_HELP)

    @model_validator(mode="after")
    def _one_source(self) -> DecontaminateParams:
        if (self.eval_dataset_id is None) == (self.eval_snapshot_id is None):
            raise ValueError("give exactly one of eval_dataset_id and eval_snapshot_id")
        return self
