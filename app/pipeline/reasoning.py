"""Reasoning traces for question-answer data: the teacher solves each question step by step, and a
solution is kept only when its final answer matches the record's reference (app.pipeline.answers).

Each question is one independent call, so a re-run answers every finished question from the cache.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from app.pipeline.answers import AnswerCheck, check_answer
from app.pipeline.llm import (
    Gateway,
    Sampling,
    TeacherError,
    TeacherUnavailable,
    run_in_batches,
)
from app.pipeline.prompts import render_prompt


@dataclass(frozen=True)
class ReasoningItem:
    key: str
    instruction: str
    input: str
    reference: str


@dataclass(frozen=True)
class ReasoningResult:
    key: str
    solution: str
    check: AnswerCheck | None  # None: the teacher failed (teacher_error)
    prompt_hash: str | None
    error: str | None = None

    @property
    def status(self) -> str:
        return self.check.status if self.check is not None else "teacher_error"


class ReasoningParams(BaseModel):
    language: Literal["en", "zh"] = "en"
    # Deterministic by default: a trace is kept or dropped on its final answer, and a re-run must read the
    # same answers from the cache.
    sampling: Sampling = Field(default_factory=lambda: Sampling(temperature=0.0, max_tokens=1024))
    batch_size: int = Field(32, ge=1, description="Questions in flight together (one emitted batch).")


@dataclass(frozen=True)
class ReasoningSummary:
    counts: dict[str, int]
    stop_reason: Literal["done", "stopped", "budget"]
    message: str = ""


def question_text(item: ReasoningItem) -> str:
    return f"{item.instruction.strip()}\n\n{item.input.strip()}".strip()


def reasoning_prompt(item: ReasoningItem, *, params: ReasoningParams) -> str:
    return render_prompt("reasoning", params.language, question=question_text(item))


async def solve_one(gateway: Gateway, item: ReasoningItem, *, params: ReasoningParams) -> ReasoningResult:
    try:
        done = await gateway.complete(
            reasoning_prompt(item, params=params), purpose="reasoning", sampling=params.sampling
        )
    except TeacherUnavailable:
        raise
    except TeacherError as exc:
        return ReasoningResult(item.key, "", None, None, str(exc)[:500])
    return ReasoningResult(item.key, done.text.strip(), check_answer(done.text, item.reference), done.key)


async def run_reasoning(
    *,
    gateway: Gateway,
    items: Sequence[ReasoningItem],
    params: ReasoningParams,
    emit: Callable[[list[ReasoningResult]], None],
    should_stop: Callable[[], bool] = lambda: False,
) -> ReasoningSummary:
    """Solve every item, emitting results batch by batch in item order."""
    counts: Counter[str] = Counter()

    def tally(results: list[ReasoningResult]) -> None:
        counts.update(r.status for r in results)
        emit(results)

    stop, message = await run_in_batches(
        items,
        lambda item: solve_one(gateway, item, params=params),
        batch_size=params.batch_size,
        emit=tally,
        should_stop=should_stop,
    )
    return ReasoningSummary(dict(counts), stop, message)
