"""Reading an evaluation prompt by prompt, for its page: one pair of systems at a time, the two answers and the
stored verdict (both orders), filtered by outcome and category; and the evaluations a training run took part in.

Reads only: the job (app/evaluation/jobs.py) writes these tables. Functions are keyword-only and take a
session, as in app/evaluation/service.py.

Outcomes are read from the first system's side of the pair (``system_a``): ``win``, ``tie``, ``loss``, or, when
the comparison has no outcome, ``unparseable`` (the judge's answer could not be read in an order, even asked
again), ``error`` (the teacher failed) or ``pending`` (not judged yet).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth.models import User
from app.evaluation.models import (
    Evaluation,
    EvaluationAnswer,
    EvaluationPrompt,
    EvaluationSystem,
    EvaluationVerdict,
)
from app.evaluation.service import require_evaluation, systems_of
from app.jobs.models import Job

OUTCOMES = ("win", "tie", "loss", "unparseable", "error", "pending")
PAGE_SIZE = 20
_BY_OUTCOME = {"a": "win", "tie": "tie", "b": "loss"}
_BY_STATUS = {"unparseable": "unparseable", "teacher_error": "error"}


def outcome_of(verdict: dict[str, Any] | None) -> str:
    """A stored PairVerdict's outcome in words, from ``system_a``'s side."""
    if not verdict:
        return "pending"
    if verdict.get("status") == "decided":
        return _BY_OUTCOME.get(str(verdict.get("outcome")), "pending")
    return _BY_STATUS.get(str(verdict.get("status")), "pending")


@dataclass(frozen=True)
class Comparison:
    position: int
    prompt_id: str
    record_id: int | None
    text: str
    category: str | None
    reference: str | None
    answer_a: str | None
    answer_b: str | None
    outcome: str
    verdict: dict[str, Any] | None
    """The stored PairVerdict (``ab``: system_a shown first; ``ba``: system_b shown first)."""


@dataclass
class ComparisonPage:
    pairs: list[tuple[str, str]]
    pair: int
    categories: list[str]
    counts: dict[str, int]
    """Prompts per outcome for the chosen pair and category (before the outcome filter)."""
    total: int
    """Prompts that pass both filters."""
    offset: int
    limit: int
    rows: list[Comparison] = field(default_factory=list)


def _pair_verdicts(db: Session, evaluation_id: int, pair: tuple[str, str]) -> dict[str, dict[str, Any]]:
    """prompt_id -> the stored verdict of this pair. Keys are read first (small), then only this pair's rows."""
    ids: dict[int, str] = {}
    for row_id, key in db.execute(
        select(EvaluationVerdict.id, EvaluationVerdict.key).where(
            EvaluationVerdict.evaluation_id == evaluation_id, EvaluationVerdict.kind == "pair"
        )
    ):
        try:
            prompt_id, a, b = json.loads(key)
        except ValueError:
            continue
        if (a, b) == pair:
            ids[row_id] = str(prompt_id)
    out: dict[str, dict[str, Any]] = {}
    chunk = sorted(ids)
    for start in range(0, len(chunk), 500):
        for row_id, verdict in db.execute(
            select(EvaluationVerdict.id, EvaluationVerdict.verdict).where(
                EvaluationVerdict.id.in_(chunk[start : start + 500])
            )
        ):
            out[ids[row_id]] = verdict
    return out


def comparisons(
    *,
    db: Session,
    user: User,
    evaluation_id: int,
    pair: int = 0,
    outcome: str | None = None,
    category: str | None = None,
    offset: int = 0,
    limit: int = PAGE_SIZE,
) -> ComparisonPage:
    """One page of the prompts with both answers of a pair and its verdict, filtered (members of the project)."""
    require_evaluation(db=db, user=user, evaluation_id=evaluation_id)
    systems = systems_of(db=db, evaluation_id=evaluation_id)
    pairs = list(combinations(dict.fromkeys(s.name for s in systems), 2))
    pair = pair if 0 <= pair < len(pairs) else 0
    prompts = db.execute(
        select(EvaluationPrompt.prompt_id, EvaluationPrompt.category)
        .where(EvaluationPrompt.evaluation_id == evaluation_id)
        .order_by(EvaluationPrompt.position)
    ).all()
    categories = sorted({c for _, c in prompts if c})
    verdicts = _pair_verdicts(db, evaluation_id, pairs[pair]) if pairs else {}
    in_category = [pid for pid, c in prompts if category in (None, "", c)]
    outcomes = {pid: outcome_of(verdicts.get(pid)) for pid in in_category}
    chosen = [pid for pid in in_category if outcome in (None, "", outcomes[pid])]
    page = ComparisonPage(
        pairs=pairs,
        pair=pair,
        categories=categories,
        counts=dict(Counter(outcomes.values())),
        total=len(chosen),
        offset=max(0, offset),
        limit=limit,
    )
    shown = chosen[page.offset : page.offset + limit]
    if shown and pairs:
        page.rows = _rows(db, evaluation_id, systems, pairs[pair], shown, verdicts)
    return page


def _rows(
    db: Session,
    evaluation_id: int,
    systems: Sequence[EvaluationSystem],
    pair: tuple[str, str],
    prompt_ids: list[str],
    verdicts: dict[str, dict[str, Any]],
) -> list[Comparison]:
    ids = {s.name: s.id for s in systems}
    answers: dict[tuple[int, str], str] = {
        (system_id, prompt_id): answer
        for system_id, prompt_id, answer in db.execute(
            select(EvaluationAnswer.system_id, EvaluationAnswer.prompt_id, EvaluationAnswer.answer).where(
                EvaluationAnswer.evaluation_id == evaluation_id,
                EvaluationAnswer.system_id.in_([ids[pair[0]], ids[pair[1]]]),
                EvaluationAnswer.prompt_id.in_(prompt_ids),
            )
        )
    }
    prompts = db.scalars(
        select(EvaluationPrompt)
        .where(EvaluationPrompt.evaluation_id == evaluation_id, EvaluationPrompt.prompt_id.in_(prompt_ids))
        .order_by(EvaluationPrompt.position)
    ).all()
    return [
        Comparison(
            position=p.position,
            prompt_id=p.prompt_id,
            record_id=p.record_id,
            text=p.text,
            category=p.category,
            reference=p.reference,
            answer_a=answers.get((ids[pair[0]], p.prompt_id)),
            answer_b=answers.get((ids[pair[1]], p.prompt_id)),
            outcome=outcome_of(verdicts.get(p.prompt_id)),
            verdict=verdicts.get(p.prompt_id),
        )
        for p in prompts
    ]


def evaluations_of_run(*, db: Session, user: User, run_id: int) -> list[tuple[Evaluation, Job]]:
    """The evaluations a training run is a system of, newest first (members of its project)."""
    from app.training.service import require_run

    require_run(db=db, user=user, run_id=run_id)
    query = (
        select(Evaluation, Job)
        .join(Job, Job.id == Evaluation.job_id)
        .where(
            Evaluation.id.in_(
                select(EvaluationSystem.evaluation_id).where(EvaluationSystem.training_run_id == run_id)
            )
        )
        .order_by(Evaluation.id.desc())
    )
    return [(e, j) for e, j in db.execute(query).all()]
