from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class SystemSpec(BaseModel):
    """One system that answers the prompts."""

    kind: Literal["base", "run", "teacher"] = Field(
        description="base: a model under IF_MODELS_DIR; run: a training run's adapter on its base model; "
        "teacher: an endpoint named in IF_TEACHERS (to show the ceiling)."
    )
    name: str | None = Field(
        None, max_length=200, description="Shown in results; default: the model, 'run N' or the teacher."
    )
    base_model: str | None = Field(None, max_length=500, description="kind=base: the folder name.")
    training_run_id: int | None = Field(None, description="kind=run: a succeeded training run.")
    teacher: str | None = Field(None, max_length=200, description="kind=teacher: the teacher's name.")


class GenerationParams(BaseModel):
    """How the systems answer (the same for every system)."""

    max_new_tokens: int = Field(256, ge=1, le=8192)
    greedy: bool = Field(True, description="Greedy decoding (the default); false samples.")
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="When sampling.")
    top_p: float = Field(0.9, gt=0.0, le=1.0, description="When sampling.")
    seed: int = 0
    batch_size: int = Field(32, ge=1, le=512, description="Prompts generated together (left padding).")


class EvaluationCreate(BaseModel):
    name: str = Field("", max_length=200)
    dataset_id: int | None = Field(None, description="The prompt set: every record of a dataset ...")
    snapshot_id: int | None = Field(None, description="... or a snapshot (give exactly one).")
    split: Literal["all", "validation"] = Field(
        "all", description="validation: only a snapshot's seeded validation split (val_fraction, seed)."
    )
    val_fraction: float = Field(0.05, gt=0.0, lt=1.0, description="With split=validation.")
    seed: int = Field(0, description="With split=validation: the split's seed (a run's config seed).")
    max_prompts: int | None = Field(None, ge=1, le=100_000, description="The first N prompts only.")
    systems: list[SystemSpec] = Field(description="Two or more systems; every pair is judged.")
    judge_teacher: str = Field(description="The judge: a teacher named in IF_TEACHERS.")
    rubric: str | None = Field(None, max_length=20_000, description="Replaces the built-in rubric.")
    use_reference: bool = Field(
        True, description="Show the judge a prompt's reference answer when it has one."
    )
    scores: bool = Field(
        False, description="Also ask for single 1-10 scores of every answer (MT-Bench style)."
    )
    language: Literal["en", "zh"] | None = Field(
        None, description="The judge prompts' language; default: the set's."
    )
    judge_max_tokens: int = Field(512, ge=16, le=8192)
    concurrency: int | None = Field(None, ge=1, le=256, description="Judge (and teacher) calls in flight.")
    budget_usd: float | None = Field(None, gt=0, description="Stop judging cleanly when reached.")
    generation: GenerationParams = Field(default_factory=GenerationParams)
    decontam_ngram: int = Field(13, ge=3, le=64, description="Decontamination: shared run of words.")
    decontam_threshold: float = Field(0.8, gt=0.0, le=1.0, description="Decontamination: ROUGE-L at least.")


class EvaluateAgainstBase(BaseModel):
    """Evaluate a training run against its base model on its snapshot's validation split (or all of it)."""

    judge_teacher: str
    name: str = Field("", max_length=200)
    split: Literal["all", "validation"] | None = Field(
        None, description="Default: the run's own validation split when it had one, else the whole snapshot."
    )
    max_prompts: int | None = Field(None, ge=1, le=100_000)
    rubric: str | None = Field(None, max_length=20_000)
    scores: bool = False
    generation: GenerationParams = Field(default_factory=GenerationParams)


class EvaluationJobParams(BaseModel):
    """Parameters of the `evaluate` job (created by POST /evaluations, not by hand)."""

    evaluation_id: int


class SystemRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    position: int
    name: str
    kind: str
    base_model: str | None
    training_run_id: int | None
    teacher: str | None


class EvaluationRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    project_id: int
    name: str
    dataset_id: int | None
    snapshot_id: int | None
    split: str
    judge_teacher: str
    params: dict[str, Any]
    job_id: int
    created_by: int | None
    created_at: datetime
    status: str = ""
    error: str | None = None
    progress_done: int = 0
    progress_total: int | None = None
    counters: dict[str, Any] = Field(default_factory=dict)
    cost_usd: float = 0.0
    systems: list[SystemRead] = Field(default_factory=list)


class EvaluationDetail(EvaluationRead):
    results: dict[str, Any] = Field(
        default_factory=dict,
        description="pairwise (win rates with intervals, per category, lengths, length-controlled), scores, "
        "validation (loss and perplexity per trained system), decontamination, judging; empty until done.",
    )


class LineageRead(BaseModel):
    """One step of a record's lineage: a snapshot holding it, a run trained on that snapshot (or none yet),
    and an evaluation of that run (or none yet)."""

    snapshot_id: int
    snapshot_name: str
    record_version: int = Field(description="The version of the record the snapshot froze.")
    training_run_id: int | None = None
    training_status: str | None = None
    evaluation_id: int | None = None
    evaluation_name: str | None = None
    evaluation_status: str | None = None
    system: str | None = Field(None, description="The run's system name in the evaluation.")


class EstimateLine(BaseModel):
    """The calls of one purpose to one teacher, and what they cost at its prices."""

    purpose: Literal["judge_pairs", "judge_scores", "teacher_answers"]
    teacher: str
    system: str | None = Field(None, description="teacher_answers: the system that answers.")
    calls: int
    tokens_in: int
    tokens_out: int = Field(description="At most: every answer as long as its max_tokens allows.")
    cost_usd: float


class EvaluationEstimate(BaseModel):
    """What an evaluation with this body would call and cost, computed from the prompt set's lengths (nothing
    is stored and no teacher is called: the judge's prompts hold answers that do not exist yet). Output tokens
    are the most the calls may write, so the cost is an upper bound (docs/evaluation.md, "Estimate")."""

    prompts: int
    systems: int
    pairs: int
    judge_calls: int = Field(description="pairs x prompts x 2 orders, + prompts x systems with scores.")
    answer_calls: int = Field(description="Calls of teacher systems answering the prompts.")
    local_answers: int = Field(description="Answers generated by base and run systems (no teacher cost).")
    total_calls: int
    tokens_in: int
    tokens_out: int
    estimated_cost_usd: float = Field(description="At most, at the teachers' configured prices.")
    lines: list[EstimateLine]
    basis: str


class AblationCreate(BaseModel):
    """Train these snapshots the same way and compare: one training run per snapshot (the same base model,
    method and hyperparameters) and one evaluation of those runs, which starts when every run has succeeded."""

    snapshot_ids: list[int] = Field(description="Two or more snapshots of one project.")
    base_model: str = Field(max_length=500, description="A folder under IF_MODELS_DIR.")
    method: Literal["lora", "qlora", "dora", "adalora", "ia3", "prefix", "prompt", "bitfit"] = "lora"
    hyperparameters: dict[str, Any] = Field(default_factory=dict, description="Any TrainConfig field.")
    include_base: bool = Field(True, description="Also evaluate the base model as it is.")
    name: str = Field("", max_length=200)
    dataset_id: int | None = Field(None, description="The prompt set: a dataset ...")
    snapshot_id: int | None = Field(None, description="... or a snapshot (give exactly one).")
    split: Literal["all", "validation"] = "all"
    max_prompts: int | None = Field(None, ge=1, le=100_000)
    judge_teacher: str
    rubric: str | None = Field(None, max_length=20_000)
    scores: bool = False
    budget_usd: float | None = Field(None, gt=0)
    generation: GenerationParams = Field(default_factory=GenerationParams)


class AblationRead(BaseModel):
    evaluation_id: int
    evaluation_job_id: int
    training_run_ids: list[int]
    status: str = Field(description="The evaluation job's: paused while it waits for the runs.")
