"""The `rewrite` job: the teacher improves the answers of existing records, each rewrite stored as a
revision of its record (app.records.service.revise_by_machine) with its provenance in `meta["rewrites"]`.

A person's decision outranks the machine's (DESIGN rule 7): a record a person accepted, rejected, edited
or rated is not rewritten unless the curator asks for it (`override_human`); then the person's text stays
in the revisions. Each write re-reads the record under a row lock: a record a person decided or edited
while the job ran is left alone.

Resumable: a record this job already rewrote is skipped (its `meta["rewrites"]` names the job), and the
others' answers come from the response cache, so a resumed job pays for no call twice.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator
from sqlalchemy.orm import Session

from app.curation.schemas import OVERRIDE_HELP
from app.datasets.models import Dataset
from app.errors import Invalid
from app.generation.batch_mode import run_items
from app.generation.cache import CallLog
from app.generation.jobs import _language, get_teacher, scope_rows
from app.generation.schemas import BATCH_HELP, BATCH_TITLE, EstimateRequest, TeacherChoice
from app.jobs.context import JobCancelled, JobContext
from app.records.models import Record
from app.records.schemas import RecordFilter

PRESET_HELP = (
    "complete: cover what the answer leaves out; format: structure and Markdown; concise: cut filler; "
    "friendly / formal: the tone; translate: into target_language; custom: only your instruction."
)


class RewriteJobParams(TeacherChoice):
    """Response rewriting: the teacher improves existing answers; each rewrite is a revision of its record."""

    preset: Literal["complete", "format", "concise", "friendly", "formal", "translate", "custom"] = Field(
        "complete", description=PRESET_HELP
    )
    instruction: str | None = Field(
        None,
        max_length=4000,
        description="Your own goal for the rewrite, in words (required for 'custom'; added to a preset).",
    )
    target_language: str | None = Field(
        None, max_length=60, description="The language to translate into (preset 'translate'), e.g. French."
    )
    scope: RecordFilter = Field(
        default_factory=lambda: RecordFilter(status=["pending", "accepted"]),
        description="Which records to rewrite (default: pending and accepted).",
    )
    max_items: int = Field(100, ge=1, le=1_000_000, description="Rewrite at most this many records.")
    override_human: bool = Field(False, description=OVERRIDE_HELP)
    batch: bool = Field(False, title=BATCH_TITLE, description=BATCH_HELP)
    batch_size: int = Field(16, ge=1, le=1000, description="Records rewritten together (one checkpoint).")
    temperature: float = Field(0.3, ge=0, le=2, description="Sampling temperature of the teacher.")
    max_tokens: int = Field(2048, ge=16, le=32_000, description="Longest rewrite, in tokens.")

    @model_validator(mode="after")
    def _goal_given(self) -> RewriteJobParams:
        if self.preset == "custom" and not (self.instruction or "").strip():
            raise ValueError("preset 'custom' needs an instruction: say what the rewrite should achieve")
        if self.preset == "translate" and not (self.target_language or "").strip():
            raise ValueError("preset 'translate' needs a target_language")
        return self


def pipeline_params(p: RewriteJobParams, *, language: str) -> Any:
    from app.pipeline.llm import Sampling
    from app.pipeline.rewrite import RewriteParams

    return RewriteParams.model_validate(
        {
            "preset": p.preset,
            "instruction": p.instruction,
            "target_language": p.target_language,
            "language": language,
            "sampling": Sampling(temperature=p.temperature, max_tokens=p.max_tokens),
            "batch_size": p.batch_size,
        }
    )


def _rewritten_towards(record: Record, goal: str) -> bool:
    return any(r.get("goal") == goal for r in (record.meta or {}).get("rewrites") or [])


def rewritable(record: Record, *, override_human: bool, goal: str | None = None) -> str | None:
    """Why the job leaves this record alone (a counter's name), or None to rewrite it. A record already
    rewritten towards the same goal (by this job before it was stopped, or an earlier one) is not
    rewritten again: re-running a cancelled job pays only for what it had not done."""
    if goal is not None and _rewritten_towards(record, goal):
        return "already_rewritten"
    if record.messages or not record.output.strip():
        return "no_answer"  # conversations and records without an answer: nothing to rewrite
    if record.human_decided and not override_human:
        return "human_skipped"
    return None


class _Write(BaseModel):
    record_id: int
    original: str
    text: str
    prompt_hash: str | None


def _store(db: Session, w: _Write, *, provenance: dict[str, Any], override_human: bool, note: str) -> str:
    from app.records.service import lock_record, revise_by_machine

    record = db.get(Record, w.record_id)
    if record is None:
        return "gone"
    lock_record(db, record)  # a person's edit or decision committed meanwhile is seen, and wins
    if record.output != w.original:
        return "changed_meanwhile"  # a person (or another job) changed it since the job read it
    if record.human_decided and not override_human:
        return "human_skipped"
    revise_by_machine(
        db=db,
        record=record,
        output=w.text,
        note=note,
        provenance={**provenance, "prompt_hash": w.prompt_hash, "human_decided": record.human_decided},
        meta_key="rewrites",
    )
    return "rewritten"


def run_rewrite_job(ctx: JobContext) -> None:
    from app.pipeline.rewrite import RewriteItem, goal_text, run_rewrite

    p = RewriteJobParams.model_validate(ctx.params)
    teacher = get_teacher(p)
    params = pipeline_params(p, language=_language(ctx))
    goal = goal_text(params)
    rows = scope_rows(ctx, ctx.dataset, p.scope, p.max_items)
    counters: dict[str, Any] = {
        "rewritten": 0,
        "unchanged": 0,
        "empty": 0,
        "refused": 0,
        "teacher_error": 0,
        "human_skipped": 0,
        "no_answer": 0,
        "changed_meanwhile": 0,
        "already_rewritten": 0,
    }
    items: list[RewriteItem] = []
    for r in rows:
        why = rewritable(r, override_human=p.override_human, goal=goal)
        if why is None:
            items.append(
                RewriteItem(key=f"rec:{r.id}", instruction=r.instruction, input=r.input, output=r.output)
            )
        else:
            counters[why] += 1
    originals = {item.key: item.output for item in items}
    provenance = {
        "teacher": teacher.name,
        "model": teacher.model,
        "preset": p.preset,
        "goal": goal,
        "job_id": ctx.job_id,
    }
    note = f"rewrite by teacher {teacher.name} ({teacher.model}), job {ctx.job_id}: {p.preset}"
    log = CallLog(ctx.job_id)
    total = len(items) + counters["already_rewritten"]
    ctx.progress(counters["already_rewritten"], total, counters=counters)

    def emit(results: list[Any]) -> None:
        with ctx.session() as db:
            for res in results:
                if res.status != "rewritten":
                    counters[res.status] += 1
                    continue
                w = _Write(
                    record_id=int(res.key.removeprefix("rec:")),
                    original=originals[res.key],
                    text=res.text,
                    prompt_hash=res.prompt_hash,
                )
                outcome = _store(db, w, provenance=provenance, override_human=p.override_human, note=note)
                counters[outcome] = counters.get(outcome, 0) + 1
        done = sum(v for k, v in counters.items() if k not in ("human_skipped", "no_answer"))
        ctx.progress(done, total, counters=counters, usage=log.flush())

    summary = run_items(
        ctx,
        teacher,
        log,
        p.budget_usd,
        run_rewrite,
        items=items,
        params=params,
        emit=emit,
        batch=p.batch,
        counters=counters,
        total=total,
    )
    ctx.set_result(
        {"stop_reason": summary.stop_reason, "message": summary.message, **counters, **log.flush()}
    )
    if summary.stop_reason == "stopped" and ctx.cancelled:
        raise JobCancelled()


def dry_run(db: Session, dataset: Dataset, request: EstimateRequest) -> Any:
    """The estimate's plan: the first records' rewrite prompts, one call per record in scope."""
    from app.datasets.service import prompt_language
    from app.generation.service import DryRun, _in_scope, _params
    from app.pipeline.rewrite import RewriteItem, rewrite_prompt

    p = _params(RewriteJobParams, request.params)
    teacher = get_teacher(p)
    extra = (
        [Record.output != ""] if p.override_human else [Record.output != "", Record.human_decided.is_(False)]
    )
    first, n = _in_scope(db, dataset.id, p.scope, p.max_items, *extra)
    if not n:
        raise Invalid(
            "no records in the scope to rewrite (records a person decided need override_human)",
            field="params.scope",
        )
    params = pipeline_params(p, language=prompt_language(dataset.language))
    prompts = [
        rewrite_prompt(RewriteItem(f"rec:{r.id}", r.instruction, r.input, r.output), params=params)
        for r in first[: request.sample_prompts]
    ]
    return DryRun(teacher, list(prompts), "rewrite", params.sampling, [0] * len(prompts), n)
