"""The `backtranslate` job: passages (records with source 'document') become instruction–answer pairs.

Each passage yields at most one record, source 'backtranslation', parent_id the passage, keyed
``bt<job>:<passage id>``: pending when the teacher scored the pair at or above the threshold, else
filtered with its reason. A redelivered job is answered from the cache and finds its keys; a second job on
the same passages adds no copies (app.generation.jobs.upsert_generated). Passages and earlier records are
never changed, so a person's decision on any of them stands.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field
from sqlalchemy import bindparam, update

from app.generation.schemas import BATCH_HELP, BATCH_TITLE, TeacherChoice
from app.jobs.context import JobCancelled, JobContext
from app.records.schemas import RecordFilter

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from app.datasets.models import Dataset
    from app.generation.schemas import EstimateRequest
    from app.generation.service import DryRun
    from app.pipeline.llm import Prompt

PASSAGE_SOURCE = "document"


class BacktranslateJobParams(TeacherChoice):
    """Instruction backtranslation (Humpback): the teacher writes an instruction for each passage, then
    scores the pair 1-5; pairs at or above the threshold are kept as pending records."""

    threshold: float = Field(
        4.0, ge=1, le=5, description="Keep pairs the teacher scores at least this (Humpback: 4)."
    )
    scope: RecordFilter = Field(
        default_factory=lambda: RecordFilter(
            source=PASSAGE_SOURCE, status=["filtered", "pending", "accepted"]
        ),
        description=(
            "The passages to backtranslate (default: imported documents' passages, which are filtered "
            "with reason document_passage, unless a person rejected them)."
        ),
    )
    max_items: int | None = Field(None, ge=1, le=1_000_000, description="At most this many passages.")
    temperature: float = Field(0.7, ge=0, le=2, description="Sampling temperature of the instruction.")
    max_tokens: int = Field(256, ge=16, le=4096, description="Longest instruction the teacher may write.")
    batch_size: int = Field(32, ge=1, le=1000, description="Passages in flight together per checkpoint.")
    batch: bool = Field(False, title=BATCH_TITLE, description=BATCH_HELP)
    skip_done: bool = Field(
        True,
        description=(
            "Skip passages that already have a backtranslated record (from any job, whatever its status or "
            "a person's edits); turn off to backtranslate them again, e.g. with another teacher."
        ),
    )


def pipeline_params(p: BacktranslateJobParams, *, language: str) -> Any:
    """The pipeline's parameters for a job (its cost estimate builds the same prompts)."""
    from app.pipeline.backtranslate import BacktranslateParams
    from app.pipeline.llm import Sampling

    return BacktranslateParams(
        threshold=p.threshold,
        language="zh" if language == "zh" else "en",
        instruction_sampling=Sampling(temperature=p.temperature, top_p=0.9, max_tokens=p.max_tokens),
        batch_size=p.batch_size,
    )


def _backtranslated(ctx: JobContext, passage_ids: list[int]) -> set[int]:
    """The passages that already have a backtranslated record: a job resumed or run again after a cancel
    skips them (no call, not even a cached one), and a record a person edited is not made again."""
    from sqlalchemy import select

    from app.pipeline.backtranslate import SOURCE
    from app.records.models import Record

    done: set[int] = set()
    with ctx.session() as db:
        for start in range(0, len(passage_ids), 10_000):
            chunk = passage_ids[start : start + 10_000]
            done.update(
                pid
                for pid in db.scalars(
                    select(Record.parent_id).where(
                        Record.dataset_id == ctx.dataset,
                        Record.source == SOURCE,
                        Record.parent_id.in_(chunk),
                    )
                )
                if pid is not None
            )
    return done


def run_backtranslate_job(ctx: JobContext) -> None:
    from app.errors import Invalid
    from app.generation.batch_mode import run_items
    from app.generation.cache import CallLog
    from app.generation.jobs import _language, get_teacher, scope_rows, upsert_generated
    from app.pipeline.backtranslate import SOURCE, BacktranslateItem, BacktranslateResult, run_backtranslate
    from app.pipeline.self_instruct import GenRecord
    from app.records.models import Record

    p = BacktranslateJobParams.model_validate(ctx.params)
    teacher = get_teacher(p)
    params = pipeline_params(p, language=_language(ctx))
    # max_items counts the passages still to do, so that jobs of max_items each work through a corpus.
    limit = None if p.skip_done else p.max_items
    rows = [r for r in scope_rows(ctx, ctx.dataset, p.scope, limit) if r.output.strip()]
    if not rows:
        raise Invalid("no passages in the scope: import documents first (POST /datasets/{id}/documents)")
    done_before = _backtranslated(ctx, [r.id for r in rows]) if p.skip_done else set()
    rows = [r for r in rows if r.id not in done_before][: p.max_items]
    items = [BacktranslateItem(key=f"rec:{r.id}", passage=r.output) for r in rows]
    passages = {f"rec:{r.id}": r for r in rows}
    log = CallLog(ctx.job_id)
    key_prefix = f"bt{ctx.job_id}"
    counters: dict[str, Any] = {
        "kept": 0,
        "filtered": 0,
        "filtered_by_reason": {},
        "copies_skipped": 0,
        "done_before": len(done_before),
    }
    ctx.progress(0, len(items), counters=counters)

    def record_of(res: BacktranslateResult) -> GenRecord:
        passage = passages[res.key]
        judged = {
            "score": res.score,
            "rationale": res.rationale,
            "threshold": p.threshold,
            "model": teacher.model,
        }
        meta = {
            "backtranslation": judged,
            "document": (passage.meta or {}).get("document"),
            "passage_index": (passage.meta or {}).get("passage_index"),
        }
        if res.status != "kept":
            meta["raw"] = res.raw[:2000]
        detail = f"score {res.score} < {p.threshold}" if res.reason == "backtranslation_score" else None
        return GenRecord(
            key=res.key.removeprefix("rec:"),
            instruction=res.instruction,
            input="",
            output=passage.output,
            status=res.status,
            reason=res.reason,
            source=SOURCE,
            teacher_model=teacher.model,
            round=0,
            detail=detail,
            prompt_hash=res.prompt_hash,
            parent_key=res.key,
            metadata=meta,
        )

    def emit(results: list[BacktranslateResult]) -> None:
        records = [record_of(r) for r in results]
        counters["copies_skipped"] += upsert_generated(
            ctx, records, dataset_id=ctx.dataset, key_prefix=key_prefix
        )
        scored = [
            {"k": f"{key_prefix}:{r.key}", "s": r.metadata["backtranslation"]["score"]}
            for r in records
            if r.metadata["backtranslation"]["score"] is not None
        ]
        if scored:
            # The score is also the record's judge_score, so the review page sorts and filters by it; only
            # this job's own records, which no person has touched before they exist.
            with ctx.session() as db:
                db.connection().execute(
                    update(Record)
                    .where(
                        Record.dataset_id == ctx.dataset,
                        Record.gen_key == bindparam("k"),
                        Record.job_id == ctx.job_id,
                        Record.human_decided.is_(False),
                    )
                    .values(judge_score=bindparam("s"))
                    .execution_options(synchronize_session=False),
                    scored,
                )
        for r in results:
            if r.status == "kept":
                counters["kept"] += 1
            else:
                counters["filtered"] += 1
                by = counters["filtered_by_reason"]
                by[r.reason or "rejected"] = by.get(r.reason or "rejected", 0) + 1
        done = counters["kept"] + counters["filtered"]
        ctx.progress(done, len(items), counters=counters, usage=log.flush())

    # In batch mode both stages go through the batch API: the instructions in a first batch, the scores of
    # those that came back usable in a second (and the re-asks of unreadable scores in a third).
    summary = run_items(
        ctx,
        teacher,
        log,
        p.budget_usd,
        run_backtranslate,
        items=items,
        params=params,
        emit=emit,
        batch=p.batch,
        counters=counters,
        total=len(items),
    )
    ctx.set_result(
        {
            "stop_reason": summary.stop_reason,
            "message": summary.message,
            "passages": len(items),
            "kept": summary.kept,
            "filtered": summary.rejected,
            "filtered_by_reason": summary.rejected_by_reason,
            "mean_score": summary.mean_score,
            "copies_skipped": counters["copies_skipped"],
            "done_before": len(done_before),
            **({"batch": counters["batch"]} if "batch" in counters else {}),
            **log.flush(),
        }
    )
    if summary.stop_reason == "stopped" and ctx.cancelled:
        raise JobCancelled()


def dry_run(db: Session, dataset: Dataset, request: EstimateRequest) -> DryRun:
    """The estimate's plan (app.generation.service.DRY_RUNS): the job's own first instruction prompts.

    Two calls per passage still to do: the instruction and the score. The score prompts cannot be sent
    before their instruction exists, so the price per call is the instruction prompt's; a score prompt is
    the same passage plus the rubric (about 450 more input tokens), which docs/generation.md adds."""
    from app.datasets.service import prompt_language
    from app.errors import Invalid
    from app.generation.jobs import get_teacher
    from app.generation.service import DryRun, _in_scope, _params
    from app.pipeline.backtranslate import BacktranslateItem, instruction_prompt
    from app.records.models import Record

    p = _params(BacktranslateJobParams, request.params)
    teacher = get_teacher(p)
    first, n = _in_scope(db, dataset.id, p.scope, p.max_items, Record.output != "")
    if not n:
        raise Invalid("no passages in the scope: import documents first", field="params.scope")
    params = pipeline_params(p, language=prompt_language(dataset.language))
    prompts: list[Prompt] = [
        instruction_prompt(BacktranslateItem(f"rec:{r.id}", r.output), params=params)
        for r in first[: request.sample_prompts]
    ]
    return DryRun(
        teacher, prompts, "backtranslate.instruction", params.instruction_sampling, [0] * len(prompts), 2 * n
    )
