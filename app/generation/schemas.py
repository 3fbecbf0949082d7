from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, field_validator
from pydantic.json_schema import SkipJsonSchema

from app.curation.schemas import OVERRIDE_HELP
from app.records.schemas import RecordFilter

# The `batch` parameter of every job that can run in batch mode (its form shows the title as the label).
BATCH_TITLE = "Use the batch API (about half price, answers within 24 h)"
BATCH_HELP = (
    "Through the teacher's Batch API (only teachers with batch: true): typically half the price, answers "
    "within 24 h; the job waits holding no worker and writes its results when every answer is in "
    "(docs/generation.md)."
)
BATCH_SPARES_HELP = (
    "Batch mode only: candidate tasks sent with the instances batches beyond the tasks still needed, as a "
    "fraction of them (rounded up). Paid even when unused; each task short of the target after a pair of "
    "batches costs another pair (up to 48 h), so raise it for a teacher whose instances often fail."
)


class TeacherChoice(BaseModel):
    teacher: str = Field(description="A teacher named in IF_TEACHERS (see GET /api/v1/teachers).")
    concurrency: int | None = Field(None, ge=1, le=256, description="Override the teacher's max_concurrency.")
    budget_usd: float | None = Field(
        None, gt=0, description="Hard budget: the job stops cleanly when reached."
    )


class SelfInstructJobParams(TeacherChoice):
    """Self-Instruct from the dataset's seed tasks (source 'seed') and accepted records."""

    target: int = Field(100, ge=1, le=1_000_000, description="Tasks to keep.")
    batch_size: int = Field(
        8, ge=1, le=1000, description="Instruction prompts per round (in flight together)."
    )
    num_human: int = Field(6, ge=0, le=20)
    num_machine: int = Field(2, ge=0, le=20)
    threshold: float = Field(0.7, gt=0, le=1)
    max_instances_per_task: int = Field(3, ge=1, le=20)
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(0.5, gt=0, le=1)
    max_tokens: int = Field(1024, ge=16, le=32_000)
    seed: int = 0
    batch: bool = Field(
        False,
        title=BATCH_TITLE,
        description=(
            "Only the instances stage (each new task's classification and instances calls, most of the "
            "job's calls) goes through the teacher's Batch API (only teachers with batch: true), at its "
            "prices; the instruction rounds depend on each other and stay synchronous. The job waits "
            "holding no worker and writes its records when every answer is in (docs/generation.md)."
        ),
    )
    batch_spares: float = Field(0.1, ge=0, le=1, description=BATCH_SPARES_HELP)


class EvolJobParams(TeacherChoice):
    """Evol-Instruct rounds over records of the dataset (default: accepted and pending)."""

    rounds: int = Field(1, ge=1, le=10)
    scope: RecordFilter = Field(default_factory=lambda: RecordFilter(status=["accepted", "pending"]))
    max_items: int = Field(100, ge=1, le=1_000_000)
    seed: int = 0
    extra: dict[str, Any] = Field(
        default_factory=dict, description="Further EvolParams fields (docs/generation.md)."
    )
    # Not offered (the form does not show it): refused when asked for, rather than silently ignored.
    batch: SkipJsonSchema[bool] = Field(False, exclude=True)

    @field_validator("batch")
    @classmethod
    def _no_batch_mode(cls, value: bool) -> bool:
        if value:
            raise ValueError(
                "Evol-Instruct cannot run in batch mode: each round rewrites the previous round's output "
                "and its eliminations decide what goes on, so no round can wait for a batch"
            )
        return value


class JudgeJobParams(TeacherChoice):
    """LLM-as-judge (Alpagasus): score 1-5 with a rationale; below the threshold is filtered."""

    threshold: float = Field(4.5, ge=1, le=5)
    rubric: str | None = Field(
        None, max_length=20_000, description="A curator's rubric; default: helpfulness+accuracy."
    )
    scope: RecordFilter = Field(default_factory=lambda: RecordFilter(status=["pending", "accepted"]))
    apply: bool = Field(
        True, description="Filter records scored below the threshold (else only store scores)."
    )
    override_human: bool = Field(False, description=OVERRIDE_HELP)
    max_items: int | None = Field(None, ge=1)
    batch: bool = Field(False, title=BATCH_TITLE, description=BATCH_HELP)


class EstimateRequest(BaseModel):
    dataset_id: int
    kind: str = Field(
        description="self_instruct | evol | judge | backtranslate | rewrite | reasoning | respond | rank_candidates"
    )
    params: dict[str, Any] = Field(default_factory=dict)
    sample_prompts: int = Field(3, ge=1, le=10)


class EstimateRead(BaseModel):
    sampled_calls: int
    tokens_in_per_call: float
    tokens_out_per_call: float
    cost_per_call_usd: float
    total_calls: int
    estimated_cost_usd: float
    batch: bool = Field(False, description="Priced at the teacher's Batch API prices (the job's batch mode).")


class TeacherRead(BaseModel):
    name: str
    model: str
    base_url: str | None = Field(None, description="Admins only: where the teacher is served.")
    api: str
    max_concurrency: int
    price_in_per_1k: float
    price_out_per_1k: float
    batch: bool = Field(False, description="The teacher offers a Batch API: jobs may run in batch mode.")
    batch_price_in_per_1k: float | None = Field(None, description="Input price through the Batch API.")
    batch_price_out_per_1k: float | None = Field(None, description="Output price through the Batch API.")
