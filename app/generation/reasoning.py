"""The `reasoning` job: for records with a known final answer, the teacher writes a step-by-step solution,
kept only when its final answer matches the record's reference (app.pipeline.answers says what is compared).

A kept solution is a new record (source `reasoning`, parent_id the original, the answer check in
`meta["answer_check"]`), not a revision of the original: the original's answer is the reference the trace
was checked against and stays as a person or the source wrote it, and both can be exported side by side
(short answers and worked solutions). A mismatched or unparseable solution is stored as a filtered record
(reason `answer_mismatch` / `answer_unparseable`) for inspection.

Resumable: records are written by stable key (`rs<job>:rec:<id>`) and every answer is in the response
cache, so a resumed job replays the finished questions without paying and writes nothing twice.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from sqlalchemy.orm import Session

from app.datasets.models import Dataset
from app.errors import Invalid
from app.generation.batch_mode import run_items
from app.generation.cache import CallLog
from app.generation.jobs import _language, get_teacher, scope_rows, upsert_generated
from app.generation.schemas import BATCH_HELP, BATCH_TITLE, EstimateRequest, TeacherChoice
from app.jobs.context import JobCancelled, JobContext
from app.records.models import Record
from app.records.schemas import RecordFilter

SOURCE = "reasoning"
# The reason a filtered trace carries, by the answer check's status.
REASONS = {"mismatched": "answer_mismatch", "unparseable": "answer_unparseable"}


class ReasoningJobParams(TeacherChoice):
    """Reasoning traces: step-by-step solutions kept only when their final answer matches the reference."""

    scope: RecordFilter = Field(
        default_factory=lambda: RecordFilter(status=["pending", "accepted"]),
        description="Which records to solve (default: pending and accepted); traces are never re-solved.",
    )
    reference_from: Literal["auto", "marker", "last_number", "output"] = Field(
        "auto",
        description="Where the reference answer is read: marker ('#### 72', 'The answer is ...'), "
        "last_number of the output (GSM8K in Alpaca form), the whole output, or auto (marker, else a short "
        "output whole, else its last number).",
    )
    max_items: int = Field(100, ge=1, le=1_000_000, description="Solve at most this many records.")
    batch: bool = Field(False, title=BATCH_TITLE, description=BATCH_HELP)
    batch_size: int = Field(16, ge=1, le=1000, description="Questions solved together (one checkpoint).")
    temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature of the teacher.")
    max_tokens: int = Field(1024, ge=16, le=32_000, description="Longest solution, in tokens.")


def _items(
    rows: list[Record], reference_from: Literal["auto", "marker", "last_number", "output"]
) -> tuple[list[Any], int]:
    from app.pipeline.answers import reference_answer
    from app.pipeline.reasoning import ReasoningItem

    items, missing = [], 0
    for r in rows:
        reference = reference_answer(r.output, reference_from) if r.instruction.strip() else None
        if r.source == SOURCE or r.messages or reference is None:
            missing += r.source != SOURCE
            continue
        items.append(
            ReasoningItem(key=f"rec:{r.id}", instruction=r.instruction, input=r.input, reference=reference)
        )
    return items, missing


def pipeline_params(p: ReasoningJobParams, *, language: str) -> Any:
    from app.pipeline.llm import Sampling
    from app.pipeline.reasoning import ReasoningParams

    return ReasoningParams.model_validate(
        {
            "language": language,
            "sampling": Sampling(temperature=p.temperature, max_tokens=p.max_tokens),
            "batch_size": p.batch_size,
        }
    )


def run_reasoning_job(ctx: JobContext) -> None:
    from app.pipeline.reasoning import question_text, run_reasoning
    from app.pipeline.self_instruct import GenRecord

    p = ReasoningJobParams.model_validate(ctx.params)
    teacher = get_teacher(p)
    params = pipeline_params(p, language=_language(ctx))
    rows = scope_rows(ctx, ctx.dataset, p.scope, p.max_items)
    items, missing = _items(rows, p.reference_from)
    if not items:
        raise Invalid("no records in the scope have a reference answer to check solutions against")
    by_key = {item.key: item for item in items}
    counters: dict[str, Any] = {
        "matched": 0,
        "mismatched": 0,
        "unparseable": 0,
        "teacher_error": 0,
        "no_reference": missing,
        "match_rate": None,
    }
    log = CallLog(ctx.job_id)
    ctx.progress(0, len(items), counters=counters)
    key_prefix = f"rs{ctx.job_id}"

    def emit(results: list[Any]) -> None:
        records = []
        for res in results:
            counters[res.status] += 1
            if res.check is None:
                continue
            item = by_key[res.key]
            status = res.check.status
            records.append(
                GenRecord(
                    key=res.key,
                    instruction=item.instruction,
                    input=item.input,
                    output=res.solution,
                    status="kept" if status == "matched" else "rejected",
                    reason=REASONS.get(status),
                    source=SOURCE,
                    teacher_model=teacher.model,
                    round=0,
                    detail=None
                    if status == "matched"
                    else f"final answer {res.check.final or '(none)'!r}, reference {item.reference!r}",
                    prompt_hash=res.prompt_hash,
                    parent_key=res.key,
                    metadata={"answer_check": res.check.to_dict(), "question": question_text(item)[:200]},
                )
            )
        upsert_generated(ctx, records, dataset_id=ctx.dataset, key_prefix=key_prefix)
        checked = counters["matched"] + counters["mismatched"] + counters["unparseable"]
        counters["match_rate"] = round(counters["matched"] / checked, 4) if checked else None
        done = checked + counters["teacher_error"]
        ctx.progress(done, len(items), counters=counters, usage=log.flush())

    summary = run_items(
        ctx,
        teacher,
        log,
        p.budget_usd,
        run_reasoning,
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
            "items": len(items),
            **counters,
            **log.flush(),
        }
    )
    if summary.stop_reason == "stopped" and ctx.cancelled:
        raise JobCancelled()


def dry_run(db: Session, dataset: Dataset, request: EstimateRequest) -> Any:
    """The estimate's plan: the first questions' prompts, one call per record with a reference."""
    from app.datasets.service import prompt_language
    from app.generation.service import DryRun, _in_scope, _params
    from app.pipeline.reasoning import reasoning_prompt

    p = _params(ReasoningJobParams, request.params)
    teacher = get_teacher(p)
    first, n = _in_scope(db, dataset.id, p.scope, p.max_items, Record.source != SOURCE, Record.output != "")
    items, _ = _items(first, p.reference_from)
    if not n or not items:
        raise Invalid("no records in the scope have a reference answer", field="params.scope")
    params = pipeline_params(p, language=prompt_language(dataset.language))
    prompts = [reasoning_prompt(item, params=params) for item in items[: request.sample_prompts]]
    # One call per record in scope (those without a reference cost nothing: an upper bound).
    return DryRun(teacher, list(prompts), "reasoning", params.sampling, [0] * len(prompts), n)
