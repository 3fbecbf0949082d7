"""The `rank_candidates` job: an LLM judge rates each candidate of the records in scope on the four aspects
and compares their pairs in both orders (app.pipeline.rank); each verdict is stored, with its rationale, as
a machine judgment (app.preferences, ``source='judge'``).

A person's judgment outranks the judge's (DESIGN rule 7): records a person already chose or ranked on are
judged too, and the verdict is stored beside the person's as advice (counter ``beside_person``); nothing a
person decided is changed, superseded or hidden. A newer verdict of the same judge model on the same
candidates supersedes its older one (the history stays).

With ``include_original`` the record's own answer joins its candidates (source ``original``), so a
teacher's candidate is compared with what the dataset already says.

Resumable: verdicts are written by key (``rank:<job>:scores:<candidate>``, ``rank:<job>:pair:<a>:<b>``);
a resumed job skips what it stored and the rest of its answers come from the cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import Field, model_validator
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.datasets.models import Dataset
from app.errors import Invalid
from app.generation.cache import CallLog
from app.generation.jobs import _language, get_teacher, run_with_gateway, scope_rows
from app.generation.schemas import EstimateRequest, TeacherChoice
from app.jobs.context import JobCancelled, JobContext
from app.records.models import Record
from app.records.schemas import RecordFilter


class RankJobParams(TeacherChoice):
    """Judge ranking: aspect ratings 1-5 per candidate and pairwise verdicts in both orders, with rationales."""

    scope: RecordFilter = Field(
        default_factory=lambda: RecordFilter(status=["pending", "accepted"]),
        description="Which records' candidates to judge (default: pending and accepted).",
    )
    max_items: int = Field(
        100, ge=1, le=1_000_000, description="Judge the candidates of at most this many records."
    )
    aspects: bool = Field(
        True,
        description="Rate each candidate 1-5 on helpfulness, honesty, instruction following, harmlessness.",
    )
    pairwise: bool = Field(
        True, description="Compare the candidates of each record in pairs, in both orders."
    )
    include_original: bool = Field(
        True, description="The record's own answer is one of the candidates judged."
    )
    max_pairs_per_record: int = Field(
        10, ge=1, le=120, description="Compare at most this many pairs per record (in candidate order)."
    )
    rubric: str | None = Field(
        None, max_length=20_000, description="Your pairwise rubric; default: the aspects."
    )
    batch_size: int = Field(16, ge=1, le=1000, description="Calls in flight together (one checkpoint).")
    max_tokens: int = Field(512, ge=16, le=32_000, description="Longest verdict, in tokens.")

    @model_validator(mode="after")
    def _something_to_do(self) -> RankJobParams:
        if not (self.aspects or self.pairwise):
            raise ValueError("nothing to do: turn on aspects, pairwise or both")
        return self


def gen_key_scores(job_id: int, candidate_id: int) -> str:
    return f"rank:{job_id}:scores:{candidate_id}"


def gen_key_pair(job_id: int, a: int, b: int) -> str:
    return f"rank:{job_id}:pair:{a}:{b}"


def pipeline_params(p: RankJobParams, *, language: str) -> Any:
    from app.pipeline.llm import Sampling
    from app.pipeline.rank import RankParams

    return RankParams.model_validate(
        {
            "language": language,
            "rubric": p.rubric,
            "sampling": Sampling(temperature=0.0, max_tokens=p.max_tokens),
            "batch_size": p.batch_size,
        }
    )


def question_of(record: Record) -> str | None:
    from app.preferences.service import final_prompt_and_answer

    messages, _ = final_prompt_and_answer(record)
    turns = [m for m in messages if m["content"].strip()]
    if not turns or turns[-1]["role"] != "user":
        return None
    if len(turns) == 1:
        return turns[0]["content"]
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in turns)


@dataclass
class _Plan:
    scores: list[Any] = field(default_factory=list)
    pairs: list[Any] = field(default_factory=list)
    records: dict[int, int] = field(default_factory=dict)  # candidate id -> record id
    person_judged: set[int] = field(default_factory=set)
    already: int = 0
    no_prompt: int = 0
    too_few: int = 0


def _pairs_of(ids: list[int], limit: int) -> list[tuple[int, int]]:
    from itertools import combinations

    return list(combinations(ids, 2))[:limit]


def plan(db: Session, rows: list[Record], p: RankJobParams, *, job_id: int | None) -> _Plan:
    """What the job judges: candidates to rate and pairs to compare (without what this job stored)."""
    from app.pipeline.rank import ScoreItem, comparison
    from app.preferences.models import PreferenceJudgment
    from app.preferences.service import candidates_of, original_candidate, person_judged

    out = _Plan()
    asked: list[Record] = []
    for r in rows:
        if question_of(r) is None:
            out.no_prompt += 1
        else:
            asked.append(r)
    if p.include_original and job_id is not None:
        for r in asked:
            original_candidate(db=db, record=r)
    cands = candidates_of(db=db, record_ids=[r.id for r in asked])
    stored = (
        set(db.scalars(select(PreferenceJudgment.gen_key).where(PreferenceJudgment.job_id == job_id)))
        if job_id is not None
        else set()
    )
    out.person_judged = person_judged(db=db, record_ids=list(cands))
    for r in asked:
        question = question_of(r)
        assert question is not None
        mine = [c for c in cands.get(r.id, []) if p.include_original or c.source != "original"]
        if len(mine) < (1 if p.aspects and not p.pairwise else 2):
            out.too_few += 1
            continue
        key = f"rec:{r.id}"
        for c in mine:
            out.records[c.id] = r.id
            if not p.aspects:
                continue
            if job_id is not None and gen_key_scores(job_id, c.id) in stored:
                out.already += 1
            else:
                out.scores.append(ScoreItem(key, c.id, question, c.content))
        if not p.pairwise:
            continue
        text = {c.id: c.content for c in mine}
        for a, b in _pairs_of([c.id for c in mine], p.max_pairs_per_record):
            if job_id is not None and gen_key_pair(job_id, a, b) in stored:
                out.already += 1
            else:
                out.pairs.append(comparison(key, question, (a, text[a]), (b, text[b])))
    return out


def _choice(outcome: str | None) -> str | None:
    return {"a": "a", "b": "b", "tie": "tie"}.get(outcome or "")


def run_rank_job(ctx: JobContext) -> None:
    from app.pipeline.rank import run_rank
    from app.preferences.models import JudgmentKind
    from app.preferences.service import record_machine_judgment

    p = RankJobParams.model_validate(ctx.params)
    teacher = get_teacher(p)
    params = pipeline_params(p, language=_language(ctx))
    rows = scope_rows(ctx, ctx.dataset, p.scope, p.max_items)
    with ctx.session() as db:
        work = plan(db, rows, p, job_id=ctx.job_id)
    total = len(work.scores) + len(work.pairs) + work.already
    if total == 0:
        raise Invalid(
            "no records in the scope have candidates to judge (run a respond job first)", field="params.scope"
        )
    counters: dict[str, Any] = {
        "scored": 0,
        "compared": 0,
        "unparseable": 0,
        "teacher_error": 0,
        "already_judged": work.already,
        "no_prompt": work.no_prompt,
        "too_few_candidates": work.too_few,
        "beside_person": len(work.person_judged),
    }
    log = CallLog(ctx.job_id)
    done = work.already
    ctx.progress(done, total, counters=counters)

    def count(status: str) -> None:
        nonlocal done
        done += 1
        if status in ("unparseable", "teacher_error"):
            counters[status] += 1

    def emit_scores(results: list[Any]) -> None:
        with ctx.session() as db:
            for res in results:
                count(res.status)
                if res.scores is None:
                    continue
                record = db.get(Record, work.records[res.candidate_id])
                if record is None:
                    continue
                stored = record_machine_judgment(
                    db=db,
                    record=record,
                    kind=JudgmentKind.scores.value,
                    candidate_ids=[res.candidate_id],
                    job_id=ctx.job_id,
                    judge_model=teacher.model,
                    gen_key=gen_key_scores(ctx.job_id, res.candidate_id),
                    scores=res.scores,
                    rationale=res.rationale,
                    meta={
                        "raw": res.raw,
                        "attempts": res.attempts,
                        "prompt_hash": res.prompt_hash,
                        "teacher": teacher.name,
                    },
                )
                counters["scored"] += stored is not None
        ctx.progress(done, total, counters=counters, usage=log.flush())

    def emit_pairs(results: list[Any]) -> None:
        with ctx.session() as db:
            for verdict in results:
                count(verdict.status)
                if verdict.status != "decided":
                    continue
                a, b = int(verdict.system_a[1:]), int(verdict.system_b[1:])
                record = db.get(Record, work.records[a])
                if record is None:
                    continue
                rationale = "\n".join(
                    f"{label}: {o.rationale}".strip()
                    for label, o in (("shown first", verdict.ab), ("shown second", verdict.ba))
                    if o.rationale
                )
                stored = record_machine_judgment(
                    db=db,
                    record=record,
                    kind=JudgmentKind.pairwise.value,
                    candidate_ids=[a, b],
                    job_id=ctx.job_id,
                    judge_model=teacher.model,
                    gen_key=gen_key_pair(ctx.job_id, a, b),
                    choice=_choice(verdict.outcome),
                    rationale=rationale,
                    meta={"verdict": verdict.model_dump(mode="json"), "teacher": teacher.name},
                )
                counters["compared"] += stored is not None
        ctx.progress(done, total, counters=counters, usage=log.flush())

    summary = run_with_gateway(
        ctx,
        teacher,
        log,
        p.budget_usd,
        lambda gateway: run_rank(
            gateway=gateway,
            scores=work.scores,
            pairs=work.pairs,
            params=params,
            emit_scores=emit_scores,
            emit_pairs=emit_pairs,
            should_stop=lambda: ctx.cancelled,
        ),
    )
    ctx.set_result(
        {"stop_reason": summary.stop_reason, "message": summary.message, **counters, **log.flush()}
    )
    if summary.stop_reason == "stopped" and ctx.cancelled:
        raise JobCancelled()


def dry_run(db: Session, dataset: Dataset, request: EstimateRequest) -> Any:
    """The estimate's plan: the first candidates' aspect prompts; every rating and both orders of every
    pair counted (re-asks for unreadable verdicts are rare and not counted)."""
    from app.datasets.service import prompt_language
    from app.generation.service import DryRun, _in_scope, _params
    from app.pipeline.pairwise import pairwise_prompt
    from app.pipeline.rank import aspects_prompt
    from app.preferences.models import Candidate
    from app.records.service import filter_clauses

    p = _params(RankJobParams, request.params)
    teacher = get_teacher(p)
    first, n = _in_scope(db, dataset.id, p.scope, p.max_items)
    ids = (
        select(Record.id)
        .where(*filter_clauses(dataset.id, p.scope))
        .order_by(Record.id)
        .limit(p.max_items)
        .subquery()
    )
    counts = [
        k + (1 if p.include_original else 0)
        for k in db.scalars(
            select(func.count(Candidate.id))
            .where(Candidate.record_id.in_(select(ids.c.id)), Candidate.source != "original")
            .group_by(Candidate.record_id)
        )
    ]
    calls = sum(
        (k if p.aspects else 0) + (2 * min(k * (k - 1) // 2, p.max_pairs_per_record) if p.pairwise else 0)
        for k in counts
    )
    work = plan(db, first, p, job_id=None)
    params = pipeline_params(p, language=prompt_language(dataset.language))
    prompts = [aspects_prompt(item, params=params) for item in work.scores[: request.sample_prompts]]
    purpose = "rank.aspects"
    if not p.aspects:
        pairwise = params.pairwise()
        purpose = "eval.pairwise"
        prompts = [
            pairwise_prompt(c.prompt, *c.prompt.answers.values(), params=pairwise)
            for c in work.pairs[: request.sample_prompts]
        ]
    if not n or not calls or not prompts:
        raise Invalid("no records in the scope have candidates to judge", field="params.scope")
    return DryRun(teacher, list(prompts), purpose, params.sampling, [0] * len(prompts), calls)
