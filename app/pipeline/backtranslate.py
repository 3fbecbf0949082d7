"""Instruction backtranslation (Humpback, Li et al. 2023): a passage of raw text becomes the answer of an
instruction the teacher writes for it (self-augmentation), and the teacher scores the pair 1–5 for how
well the passage answers it (self-curation, the paper's rubric). Pairs at or above the threshold are kept.

Both answers are untrusted text. The instruction is cleaned of the wrappers teachers add ("Instruction:",
quotes, code fences) and refused when nothing usable is left; the score is read by the judge's parser
(app.pipeline.judge.parse_score), asked for again once, and never guessed.

Deterministic given the teacher's answers (one sample per prompt), so a replayed job is answered from the
cache and sends nothing twice.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from app.pipeline.judge import parse_score
from app.pipeline.llm import (
    Gateway,
    Sampling,
    TeacherError,
    TeacherUnavailable,
    run_in_batches,
)
from app.pipeline.prompts import render_prompt

SOURCE = "backtranslation"
# An "instruction" this long is the teacher answering or rewriting the passage, not asking for it.
MAX_INSTRUCTION_CHARS = 2000


@dataclass(frozen=True)
class BacktranslateItem:
    key: str
    passage: str


@dataclass(frozen=True)
class BacktranslateResult:
    key: str
    instruction: str
    score: float | None
    rationale: str
    status: Literal["kept", "rejected"]
    reason: str | None
    """``backtranslation_score`` (below the threshold), ``backtranslation_no_instruction``,
    ``backtranslation_unscored`` (no readable score, twice) or ``teacher_error``."""
    raw: str
    prompt_hash: str | None


class BacktranslateParams(BaseModel):
    threshold: float = Field(4.0, ge=1, le=5, description="Keep pairs scored at least this (Humpback: 4).")
    language: Literal["en", "zh"] = "en"
    instruction_sampling: Sampling = Field(
        default_factory=lambda: Sampling(temperature=0.7, top_p=0.9, max_tokens=256)
    )
    score_sampling: Sampling = Field(default_factory=lambda: Sampling(temperature=0.0, max_tokens=256))
    batch_size: int = Field(32, ge=1, description="Passages per emitted batch (in flight together).")


@dataclass(frozen=True)
class BacktranslateSummary:
    kept: int
    rejected: int
    rejected_by_reason: dict[str, int]
    mean_score: float | None
    stop_reason: Literal["done", "stopped", "budget"]
    message: str = ""


_FENCE = re.compile(r"^```[\w-]*\s*\n?(.*?)\n?```$", re.S)
_LABEL = re.compile(
    r"^\s*(?:\*\*)?(?:#+\s*)?(?:instruction|user instruction|question|prompt|request|指令|问题|用户指令)"
    r"\s*(?:\*\*)?\s*[:：]\s*(?:\*\*)?",
    re.I,
)
_QUOTES = ('""', "''", "“”", "「」", "『』", "‘’")


def parse_instruction(text: str) -> str:
    """The instruction in a teacher's answer, or "" when there is none to use."""
    text = (text or "").strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    text = _LABEL.sub("", text, count=1).strip()
    # "Here is the instruction:\n\n<instruction>": the chatter line goes, the instruction stays.
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].rstrip().endswith((":", "：")) and len(lines[0]) < 80:
        text = "\n".join(lines[1:]).strip()
        text = _LABEL.sub("", text, count=1).strip()
    for pair in _QUOTES:
        if len(text) >= 2 and text[0] == pair[0] and text[-1] == pair[1]:
            text = text[1:-1].strip()
    # An unclosed or empty fence leaves backticks alone; an answer without a single letter is no instruction.
    text = text.strip("`").strip()
    if len(text) > MAX_INSTRUCTION_CHARS or not re.search(r"\w", text):
        return ""
    return text


def instruction_prompt(item: BacktranslateItem, *, params: BacktranslateParams) -> str:
    return render_prompt("backtranslate_instruction", params.language, passage=item.passage.strip())


def score_prompt(instruction: str, passage: str, *, params: BacktranslateParams) -> str:
    return render_prompt(
        "backtranslate_score", params.language, instruction=instruction, passage=passage.strip()
    )


async def backtranslate_one(
    gateway: Gateway, item: BacktranslateItem, *, params: BacktranslateParams
) -> BacktranslateResult:
    try:
        asked = await gateway.complete(
            instruction_prompt(item, params=params),
            purpose="backtranslate.instruction",
            sampling=params.instruction_sampling,
        )
        instruction = parse_instruction(asked.text)
        if not instruction or instruction.strip() == item.passage.strip():
            return BacktranslateResult(
                item.key, "", None, "", "rejected", "backtranslation_no_instruction", asked.text, asked.key
            )
        prompt = score_prompt(instruction, item.passage, params=params)
        first = await gateway.complete(prompt, purpose="backtranslate.score", sampling=params.score_sampling)
        parsed, raw = parse_score(first.text), first.text
        if parsed is None:
            retry = [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": first.text},
                {"role": "user", "content": render_prompt("judge_retry", params.language)},
            ]
            second = await gateway.complete(
                retry, purpose="backtranslate.score.retry", sampling=params.score_sampling, sample_index=1
            )
            parsed, raw = parse_score(second.text), f"{first.text}\n---\n{second.text}"
    except TeacherUnavailable:
        raise
    except TeacherError as exc:
        return BacktranslateResult(item.key, "", None, "", "rejected", "teacher_error", str(exc)[:500], None)
    if parsed is None:
        return BacktranslateResult(
            item.key, instruction, None, "", "rejected", "backtranslation_unscored", raw, asked.key
        )
    score = round(parsed.score, 4)
    kept = score >= params.threshold
    return BacktranslateResult(
        item.key,
        instruction,
        score,
        parsed.rationale,
        "kept" if kept else "rejected",
        None if kept else "backtranslation_score",
        raw,
        asked.key,
    )


async def run_backtranslate(
    *,
    gateway: Gateway,
    items: Sequence[BacktranslateItem],
    params: BacktranslateParams,
    emit: Callable[[list[BacktranslateResult]], None],
    should_stop: Callable[[], bool] = lambda: False,
) -> BacktranslateSummary:
    """Backtranslate every passage, emitting results batch by batch in item order."""
    reasons: Counter[str] = Counter()
    kept = 0
    scores: list[float] = []

    def tally(results: list[BacktranslateResult]) -> None:
        nonlocal kept
        for r in results:
            if r.status == "kept":
                kept += 1
            else:
                reasons[r.reason or "rejected"] += 1
            if r.score is not None:
                scores.append(r.score)
        emit(results)

    stop, message = await run_in_batches(
        items,
        lambda item: backtranslate_one(gateway, item, params=params),
        batch_size=params.batch_size,
        emit=tally,
        should_stop=should_stop,
    )
    mean = round(sum(scores) / len(scores), 4) if scores else None
    return BacktranslateSummary(kept, sum(reasons.values()), dict(reasons), mean, stop, message)
