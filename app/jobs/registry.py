"""Job kinds: their queue, the role needed to start them, their params model and handler.

Handlers are named by dotted path and imported only inside workers, so the web process never imports
heavy modules (torch, the generation pipeline) just to validate a job's parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Any

from pydantic import BaseModel


@dataclass(frozen=True)
class JobKind:
    name: str
    queue: str
    params_model: str  # dotted path to a pydantic model
    handler: str  # dotted path to `def handler(ctx: JobContext) -> None`
    description: str
    needs_dataset: bool = True
    # Internal kinds are created by their own endpoint (e.g. POST /training-runs), never by POST /jobs.
    internal: bool = False
    # Dotted path to `fn(params: dict) -> None` raising a domain error for what a schema cannot check.
    validator: str | None = None

    def params_cls(self) -> type[BaseModel]:
        return load_object(self.params_model)  # type: ignore[no-any-return]

    def handler_fn(self) -> Any:
        return load_object(self.handler)


def load_object(path: str) -> Any:
    module, _, attr = path.rpartition(".")
    return getattr(import_module(module), attr)


KINDS: dict[str, JobKind] = {}


def register(kind: JobKind) -> None:
    KINDS[kind.name] = kind


register(
    JobKind(
        "import",
        "default",
        "app.imports.schemas.ImportParams",
        "app.imports.service.run_import_job",
        "Import an uploaded file into a dataset.",
    )
)
register(
    JobKind(
        "train",
        "gpu",
        "app.training.schemas.TrainingJobParams",
        "app.training.jobs.run_training_job",
        "Train an adapter on a snapshot (created through POST /training-runs).",
        needs_dataset=False,
        internal=True,
    )
)
register(
    JobKind(
        "evaluate",
        "gpu",
        "app.evaluation.schemas.EvaluationJobParams",
        "app.evaluation.jobs.run_evaluation_job",
        "Systems answer a prompt set, a judge compares every pair (created through POST /evaluations).",
        needs_dataset=False,
        internal=True,
    )
)
register(
    JobKind(
        "dedup",
        "default",
        "app.curation.schemas.DedupParams",
        "app.curation.jobs.run_dedup_job",
        "ROUGE-L near-duplicate filter (exact, CJK-aware) over a dataset or a filter of it.",
    )
)
register(
    JobKind(
        "rules",
        "default",
        "app.curation.schemas.RulesParams",
        "app.curation.jobs.run_rules_job",
        "Heuristic quality rules; every rejected record keeps the rule and the detail.",
    )
)
register(
    JobKind(
        "decontaminate",
        "default",
        "app.curation.schemas.DecontaminateParams",
        "app.curation.decontam.run_decontaminate_job",
        "Filter the records that copy prompts of an evaluation set (13-gram overlap or ROUGE-L), with the prompt.",
    )
)
register(
    JobKind(
        "self_instruct",
        "default",
        "app.generation.schemas.SelfInstructJobParams",
        "app.generation.jobs.run_self_instruct_job",
        "Self-Instruct generation from the dataset's seed tasks, with classification-aware instances.",
        validator="app.generation.jobs.validate_teacher",
    )
)
register(
    JobKind(
        "evol",
        "default",
        "app.generation.schemas.EvolJobParams",
        "app.generation.jobs.run_evol_job",
        "Evol-Instruct: in-depth and in-breadth evolution, failed evolutions eliminated with a reason.",
        validator="app.generation.jobs.validate_teacher",
    )
)
register(
    JobKind(
        "judge",
        "default",
        "app.generation.schemas.JudgeJobParams",
        "app.generation.jobs.run_judge_job",
        "LLM-as-judge (Alpagasus): a 1-5 score and rationale per record; below the threshold is filtered.",
        validator="app.generation.jobs.validate_teacher",
    )
)
register(
    JobKind(
        "backtranslate",
        "default",
        "app.generation.backtranslate.BacktranslateJobParams",
        "app.generation.backtranslate.run_backtranslate_job",
        "Instruction backtranslation (Humpback): an instruction per document passage, the pair scored 1-5.",
        validator="app.generation.jobs.validate_teacher",
    )
)
register(
    JobKind(
        "convert",
        "default",
        "app.curation.schemas.ConvertParams",
        "app.curation.jobs.run_convert_job",
        "Turn a CSV/JSONL/Parquet/Natural Instructions table into records with instruction templates.",
    )
)
register(
    JobKind(
        "mix",
        "default",
        "app.curation.schemas.MixParams",
        "app.curation.jobs.run_mix_job",
        "Mix datasets of the project into this one with quotas or weights, deduplicated across sources.",
    )
)
register(
    JobKind(
        "hub_push",
        "default",
        "app.snapshots.schemas.HubPushParams",
        "app.snapshots.hub.run_hub_push_job",
        "Push a snapshot (Parquet, dataset card) to the Hugging Face Hub (created through POST /snapshots/{id}/hub).",
        internal=True,
    )
)
register(
    JobKind(
        "rewrite",
        "default",
        "app.generation.rewrite.RewriteJobParams",
        "app.generation.rewrite.run_rewrite_job",
        "Response rewriting: the teacher improves answers; each rewrite is a revision with its provenance.",
        validator="app.generation.jobs.validate_teacher",
    )
)
register(
    JobKind(
        "reasoning",
        "default",
        "app.generation.reasoning.ReasoningJobParams",
        "app.generation.reasoning.run_reasoning_job",
        "Reasoning traces: step-by-step solutions kept only when their final answer matches the reference.",
        validator="app.generation.jobs.validate_teacher",
    )
)
register(
    JobKind(
        "respond",
        "default",
        "app.generation.respond.RespondJobParams",
        "app.generation.respond.run_respond_job",
        "Candidate responses: n answers per prompt from one or more teachers, stored as candidates to rank.",
        validator="app.generation.respond.validate_respond",
    )
)
register(
    JobKind(
        "rank_candidates",
        "default",
        "app.generation.rank.RankJobParams",
        "app.generation.rank.run_rank_job",
        "LLM judge over candidates: aspect scores 1-5 each and pairs in both orders, each with its rationale.",
        validator="app.generation.jobs.validate_teacher",
    )
)
register(
    JobKind(
        "respond_local",
        "gpu",
        "app.generation.respond_local.RespondLocalJobParams",
        "app.generation.respond_local.run_respond_local_job",
        "Candidate responses from trained systems (training runs' adapters, base models) via the evaluation generator.",
    )
)
