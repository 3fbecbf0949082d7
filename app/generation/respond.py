"""The `respond` job: teachers answer each record's prompt with n candidates each (app.pipeline.respond),
stored as candidates of the record (app.preferences) with their provenance: teacher, model, sampling.

Samplers: the job's own teacher (``teacher``, ``n``, ``temperature``...) and any further ``samplers`` (other
teachers, temperatures or seeds). Sample ``j`` of a sampler with a seed sends ``seed + j``; each sample is
its own cached request (``sample_index``), so a resumed or repeated job pays for no answer twice.

Prompts without answers (InstructionWild-style imports, a ShareGPT conversation ending with the user) are
answered like any other. ``fill_empty_output``: a record whose output is empty and that no person decided
gets the first candidate of this job as its output, as a machine revision (meta ``responses``), so it can
be reviewed and trained on like the rest; a person's later decision or edit outranks it as always.
Conversations are not filled (their answer is a turn, not the output): their candidates stay candidates.

Resumable: candidates are written by key (``respond:<job>:s<sampler>:<sample>``, unique per record, insert
ignoring duplicates); a resumed job skips the keys it already wrote and finds the rest in the cache. An
answer identical to a candidate the record already has (a re-run of the same samplers, a teacher at
temperature 0) is not stored again (counter ``duplicate``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.datasets.models import Dataset
from app.errors import Invalid
from app.generation.cache import CallLog
from app.generation.jobs import get_teacher, run_with_gateway, scope_rows
from app.generation.schemas import BATCH_HELP, BATCH_TITLE, EstimateRequest, TeacherChoice
from app.jobs.context import JobCancelled, JobContext
from app.pipeline.llm import TeacherConfig
from app.records.models import Record
from app.records.schemas import RecordFilter

SAMPLES_HELP = "Candidates per prompt from this sampler."
SEED_HELP = "Sample j sends seed + j (teachers that honour a seed sample reproducibly); empty: no seed."


class Sampler(BaseModel):
    """One more way to answer: a teacher with its sampling."""

    teacher: str = Field(description="A teacher named in IF_TEACHERS (see GET /api/v1/teachers).")
    n: int = Field(1, ge=1, le=16, description=SAMPLES_HELP)
    temperature: float = Field(0.8, ge=0, le=2, description="Sampling temperature.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling; empty: the teacher's.")
    max_tokens: int = Field(1024, ge=16, le=32_000, description="Longest answer, in tokens.")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description=SEED_HELP)


class RespondJobParams(TeacherChoice):
    """Candidate responses: n answers per prompt from one or more teachers, stored as candidates."""

    n: int = Field(2, ge=1, le=16, description=SAMPLES_HELP)
    temperature: float = Field(0.8, ge=0, le=2, description="Sampling temperature of the teacher.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling; empty: the teacher's.")
    max_tokens: int = Field(1024, ge=16, le=32_000, description="Longest answer, in tokens.")
    seed: int | None = Field(0, ge=0, le=2**31 - 1, description=SEED_HELP)
    samplers: list[Sampler] = Field(
        default_factory=list,
        max_length=8,
        description="Further teachers or sampling settings, each adding its own n candidates per prompt.",
    )
    system_prompt: str | None = Field(
        None, max_length=20_000, description="Sent before prompts that have no system prompt of their own."
    )
    scope: RecordFilter = Field(
        default_factory=lambda: RecordFilter(status=["pending", "accepted"]),
        description="Which records to answer (default: pending and accepted).",
    )
    max_items: int = Field(100, ge=1, le=1_000_000, description="Answer at most this many records.")
    fill_empty_output: bool = Field(
        True,
        description="A record with an empty output that no person decided gets the first candidate as output.",
    )
    batch_size: int = Field(16, ge=1, le=1000, description="Calls in flight together (one checkpoint).")
    batch: bool = Field(False, title=BATCH_TITLE, description=BATCH_HELP)

    def all_samplers(self) -> list[Sampler]:
        own = Sampler(
            teacher=self.teacher,
            n=self.n,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            seed=self.seed,
        )
        return [own, *self.samplers]


def validate_respond(params: dict[str, Any]) -> None:
    """Job-creation hook: every sampler's teacher must be known before anything is queued."""
    p = RespondJobParams.model_validate(params)
    teachers = [get_teacher(p)]
    for i, s in enumerate(p.samplers):
        try:
            teachers.append(get_teacher(TeacherChoice(teacher=s.teacher)))
        except Invalid as exc:
            raise Invalid(exc.message, field=f"params.samplers.{i}.teacher") from exc
    for t in teachers if p.batch else []:
        if not t.batch:
            raise Invalid(
                f"teacher {t.name!r} does not offer a batch API (batch: false in IF_TEACHERS)",
                field="params.batch",
            )


def sampler_teacher(p: RespondJobParams, s: Sampler, sample: int) -> TeacherConfig:
    """The teacher as sample `sample` of sampler `s` calls it: with the sample's seed in the request."""
    teacher = get_teacher(TeacherChoice(teacher=s.teacher, concurrency=p.concurrency))
    if s.seed is None:
        return teacher
    return teacher.model_copy(update={"extra_body": {**teacher.extra_body, "seed": s.seed + sample}})


def pipeline_params(p: RespondJobParams, s: Sampler) -> Any:
    from app.pipeline.llm import Sampling
    from app.pipeline.respond import RespondParams

    return RespondParams(
        sampling=Sampling(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens),
        system_prompt=p.system_prompt,
        batch_size=p.batch_size,
    )


def record_item(record: Record, sample: int) -> Any:
    """The record's prompt as a pipeline item, or None when it has none (no instruction, no user turn)."""
    from app.pipeline.respond import RespondItem
    from app.preferences.service import final_prompt_and_answer

    messages, _ = final_prompt_and_answer(record)
    if not messages or messages[-1]["role"] != "user" or not messages[-1]["content"].strip():
        return None
    return RespondItem(
        key=f"rec:{record.id}",
        messages=tuple((m["role"], m["content"]) for m in messages),
        sample_index=sample,
    )


def gen_key(job_id: int, sampler: int, sample: int) -> str:
    return f"respond:{job_id}:s{sampler}:{sample}"


@dataclass
class _Plan:
    sampler_index: int
    sample: int
    sampler: Sampler
    items: list[Any]


def _written(ctx: JobContext, record_ids: Sequence[int]) -> set[tuple[int, str]]:
    """(record, gen_key) of the candidates this job already wrote: what a resumed job skips."""
    from app.preferences.models import Candidate

    with ctx.session() as db:
        return {
            (rid, key)
            for rid, key in db.execute(
                select(Candidate.record_id, Candidate.gen_key).where(Candidate.job_id == ctx.job_id)
            )
            if key is not None and rid in set(record_ids)
        }


def _fill_output(db: Session, record: Record, text: str, provenance: dict[str, Any]) -> bool:
    from app.records.service import lock_record, revise_by_machine

    lock_record(db, record)  # a person's edit or decision committed meanwhile is seen, and wins
    if record.output.strip() or record.messages or record.human_decided:
        return False
    revise_by_machine(
        db=db,
        record=record,
        output=text,
        note=f"answered by teacher {provenance['teacher']} ({provenance['model']}), job {provenance['job_id']}",
        provenance=provenance,
        meta_key="responses",
    )
    return True


def _ignore(results: list[Any]) -> None:
    """The emit of batch mode's passes that only find the calls still missing: they write nothing."""


def run_respond_job(ctx: JobContext) -> None:
    from app.pipeline.respond import run_respond
    from app.pipeline.textnorm import normalize
    from app.preferences.models import Candidate, CandidateSource
    from app.preferences.service import add_candidate

    p = RespondJobParams.model_validate(ctx.params)
    samplers = p.all_samplers()
    rows = scope_rows(ctx, ctx.dataset, p.scope, p.max_items)
    ids = [r.id for r in rows]
    written = _written(ctx, ids)
    counters: dict[str, Any] = {
        "answered": 0,
        "truncated": 0,
        "empty": 0,
        "teacher_error": 0,
        "duplicate": 0,
        "no_prompt": 0,
        "already_answered": 0,
        "outputs_filled": 0,
    }
    plans: list[_Plan] = []
    for si, s in enumerate(samplers):
        for j in range(s.n):
            items = []
            for r in rows:
                item = record_item(r, j)
                if item is None:
                    counters["no_prompt"] += si == 0 and j == 0
                elif (r.id, gen_key(ctx.job_id, si, j)) in written:
                    counters["already_answered"] += 1
                else:
                    items.append(item)
            plans.append(_Plan(si, j, s, items))
    total = sum(len(plan.items) for plan in plans) + counters["already_answered"]
    if total == 0:
        raise Invalid("no records in the scope have a prompt to answer", field="params.scope")
    log = CallLog(ctx.job_id)
    done = counters["already_answered"]
    ctx.progress(done, total, counters=counters)
    spent = 0.0
    stop_reason, message = "done", ""

    for plan in plans:
        teacher = sampler_teacher(p, plan.sampler, plan.sample)
        params = pipeline_params(p, plan.sampler)
        key = gen_key(ctx.job_id, plan.sampler_index, plan.sample)
        provenance = {"teacher": teacher.name, "model": teacher.model, "job_id": ctx.job_id}
        sampling = {
            "teacher": teacher.name,
            "temperature": plan.sampler.temperature,
            "top_p": plan.sampler.top_p,
            "max_tokens": plan.sampler.max_tokens,
            "seed": None if plan.sampler.seed is None else plan.sampler.seed + plan.sample,
            "sample_index": plan.sample,
            "sampler": plan.sampler_index,
        }

        def emit(
            results: list[Any],
            key: str = key,
            sampling: dict[str, Any] = sampling,
            model: str = teacher.model,
            provenance: dict[str, Any] = provenance,
        ) -> None:
            nonlocal done
            with ctx.session() as db:
                for res in results:
                    done += 1
                    if res.status not in ("answered", "truncated"):
                        counters[res.status] += 1
                        continue
                    record = db.get(Record, int(res.key.removeprefix("rec:")))
                    if record is None:
                        continue
                    same = {
                        normalize(c)
                        for c in db.scalars(select(Candidate.content).where(Candidate.record_id == record.id))
                    }
                    if normalize(res.text) in same:
                        counters["duplicate"] += 1
                        continue
                    cand = add_candidate(
                        db=db,
                        record=record,
                        content=res.text,
                        source=CandidateSource.teacher.value,
                        model=model,
                        params=sampling,
                        job_id=ctx.job_id,
                        gen_key=key,
                        meta={
                            "prompt_hash": res.prompt_hash,
                            "tokens": res.tokens_out,
                            "finish_reason": res.finish_reason,
                        },
                    )
                    if cand is None:
                        continue
                    counters[res.status] += 1
                    if (
                        p.fill_empty_output
                        and not record.output.strip()
                        and _fill_output(db, record, res.text, {**provenance, "candidate_id": cand.id})
                    ):
                        counters["outputs_filled"] += 1
            ctx.progress(done, total, counters=counters, usage=log.flush())

        budget = None if p.budget_usd is None else p.budget_usd - spent
        if budget is not None and budget <= 0:
            stop_reason, message = "budget", f"the budget of ${p.budget_usd} is spent"
            break

        async def go(gateway: Any, plan: _Plan = plan, params: Any = params, emit: Any = emit) -> Any:
            nonlocal spent
            try:
                return await run_respond(
                    gateway=gateway,
                    items=plan.items,
                    params=params,
                    emit=emit,
                    should_stop=lambda: ctx.cancelled,
                )
            finally:
                spent += gateway.spent_usd

        if p.batch:
            # Batch mode (app/generation/batch_mode.py): one sample of one sampler at a time, each its
            # batch (or batches); the job's own ledger counts the budget there.
            from app.generation.batch_mode import run_pipeline

            def in_batches(gateway: Any, real: bool, go: Any = go, emit: Any = emit) -> Any:
                return go(gateway, emit=emit if real else _ignore)

            summary = run_pipeline(
                ctx,
                teacher,
                log,
                p.budget_usd,
                in_batches,
                batch=True,
                counters=counters,
                total=total,
            )
        else:
            summary = run_with_gateway(ctx, teacher, log, budget, go)
        if summary.stop_reason != "done":
            stop_reason, message = summary.stop_reason, summary.message
            break

    ctx.set_result(
        {
            "stop_reason": stop_reason,
            "message": message,
            "records": len(rows),
            "samplers": len(samplers),
            **counters,
            **log.flush(),
        }
    )
    if stop_reason == "stopped" and ctx.cancelled:
        raise JobCancelled()


def dry_run(db: Session, dataset: Dataset, request: EstimateRequest) -> Any:
    """The estimate's plan: the first prompts as the first sampler's first sample sends them; every
    sampler's calls counted (priced at the first sampler's teacher)."""
    from app.generation.service import DryRun, _in_scope, _params
    from app.pipeline.respond import to_messages

    p = _params(RespondJobParams, request.params)
    samplers = p.all_samplers()
    first, n = _in_scope(db, dataset.id, p.scope, p.max_items)
    items = [item for item in (record_item(r, 0) for r in first) if item is not None]
    if not n or not items:
        raise Invalid("no records in the scope have a prompt to answer", field="params.scope")
    teacher = sampler_teacher(p, samplers[0], 0)
    params = pipeline_params(p, samplers[0])
    prompts = [to_messages(item, params=params) for item in items[: request.sample_prompts]]
    calls = n * sum(s.n for s in samplers)
    return DryRun(teacher, list(prompts), "respond", params.sampling, [0] * len(prompts), calls)
