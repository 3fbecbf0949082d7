"""LLM judge (Alpagasus-style quality filter): a 1–5 score with a rationale, and judge/human agreement.

An answer we cannot read is asked for again once; if that fails too the record stays *unscored*
(``score=None``), never a made-up number.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from app.pipeline.llm import (
    Gateway,
    Sampling,
    TeacherError,
    TeacherUnavailable,
    run_in_batches,
)
from app.pipeline.prompts import load_prompt, render_prompt


@dataclass(frozen=True)
class ParsedScore:
    score: float
    """On the 1–5 scale."""
    rationale: str


@dataclass(frozen=True)
class JudgeItem:
    key: str
    instruction: str
    input: str
    output: str


@dataclass(frozen=True)
class JudgeResult:
    key: str
    score: float | None
    rationale: str
    status: Literal["kept", "rejected", "unscored"]
    reason: str | None
    """``judge_below`` (score under the threshold), ``judge_unparseable`` or ``teacher_error``."""
    raw: str
    attempts: int
    prompt_hash: str | None


class JudgeParams(BaseModel):
    rubric: str | None = Field(None, description="The curator's rubric; default: the built-in 1–5 rubric.")
    threshold: float = Field(
        4.5, ge=1, le=5, description="Keep records scoring at least this (Alpagasus: 4.5)."
    )
    language: Literal["en", "zh"] = "en"
    sampling: Sampling = Field(default_factory=lambda: Sampling(temperature=0.0, max_tokens=256))
    batch_size: int = Field(64, ge=1, description="Records per emitted batch.")


@dataclass(frozen=True)
class JudgeSummary:
    kept: int
    rejected: int
    unscored: int
    mean_score: float | None
    stop_reason: Literal["done", "stopped", "budget"]
    message: str = ""


_NUMBER = r"(\d+(?:\.\d+)?)"


def _normalise(value: float, scale: float) -> float | None:
    """A score on a 1–``scale`` (or 0–``scale``) scale mapped linearly onto 1–5; ``None`` if out of range."""
    if scale <= 0 or value < 0 or value > scale:
        return None
    if scale == 5:
        return max(1.0, value)
    return max(1.0, min(5.0, 1 + (value - 1) * 4 / (scale - 1)))


def _infer_scale(value: float) -> float:
    # A bare number above 10 ("Score: 42") has no scale we could know: out of range, hence unscored.
    return 5.0 if value <= 5 else 10.0


def _json_score(text: str) -> ParsedScore | None:
    for match in re.finditer(r"\{[^{}]*\}", text, re.S):
        try:
            data: Any = json.loads(match.group(0))
        except json.JSONDecodeError:
            continue
        if not isinstance(data, dict):
            continue
        raw = next((data[k] for k in ("score", "rating", "Score", "Rating") if k in data), None)
        try:
            value = float(raw) if raw is not None and not isinstance(raw, bool) else None
        except (TypeError, ValueError):
            value = None
        if value is None:
            continue
        scale = float(data.get("scale") or data.get("max") or _infer_scale(value))
        score = _normalise(value, scale)
        if score is not None:
            reason = data.get("rationale") or data.get("reason") or data.get("explanation") or ""
            return ParsedScore(score, str(reason))
    return None


def parse_score(text: str) -> ParsedScore | None:
    """A 1–5 score from what judges really write: JSON, "Score: 4", "4/5", "7.5/10", "4 out of 5", "4分".

    Scores on other scales are mapped linearly onto 1–5 (10/10 -> 5, 1/10 -> 1, 7.5/10 -> 3.89).
    ``None`` when no score can be read — never a guess.
    """
    if not text or not text.strip():
        return None
    parsed = _json_score(text)
    if parsed:
        return parsed
    rationale = text.strip()
    for pattern in (
        rf"{_NUMBER}\s*/\s*(\d+)\b",
        rf"{_NUMBER}\s+out\s+of\s+(\d+)",
        rf"{_NUMBER}\s*分?\s*[（(]?满分\s*(\d+)",
    ):
        match = re.search(pattern, text, re.I)
        if match:
            score = _normalise(float(match.group(1)), float(match.group(2)))
            # "12/5" is no score at all; reading the "12" again with another pattern would be a guess.
            return ParsedScore(score, rationale) if score is not None else None
    match = re.search(rf"(?:score|rating|评分|分数|得分)\W{{0,6}}{_NUMBER}", text, re.I)
    if match is None:
        match = re.search(rf"^\s*{_NUMBER}\s*(?:分)?\s*$", text.strip().splitlines()[0])
    if match is None:
        match = re.search(rf"{_NUMBER}\s*分", text)
    if match:
        value = float(match.group(1))
        score = _normalise(value, _infer_scale(value))
        if score is not None:
            return ParsedScore(score, rationale)
    return None


def judge_prompt(item: JudgeItem, *, params: JudgeParams) -> str:
    rubric = params.rubric or load_prompt("judge_rubric", params.language).template.strip()
    return render_prompt(
        "judge",
        params.language,
        instruction=item.instruction,
        input=item.input or "-",
        output=item.output,
        rubric=rubric,
    )


async def judge_one(gateway: Gateway, item: JudgeItem, *, params: JudgeParams) -> JudgeResult:
    prompt = judge_prompt(item, params=params)
    try:
        first = await gateway.complete(prompt, purpose="judge", sampling=params.sampling)
        parsed = parse_score(first.text)
        raw, attempts, key = first.text, 1, first.key
        if parsed is None:
            retry = [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": first.text},
                {"role": "user", "content": render_prompt("judge_retry", params.language)},
            ]
            second = await gateway.complete(
                retry, purpose="judge.retry", sampling=params.sampling, sample_index=1
            )
            parsed = parse_score(second.text)
            raw, attempts = f"{first.text}\n---\n{second.text}", 2
    except TeacherUnavailable:
        raise
    except TeacherError as exc:
        return JudgeResult(item.key, None, "", "unscored", "teacher_error", str(exc)[:500], 0, None)
    if parsed is None:
        return JudgeResult(item.key, None, "", "unscored", "judge_unparseable", raw, attempts, key)
    status: Literal["kept", "rejected"] = "kept" if parsed.score >= params.threshold else "rejected"
    reason = None if status == "kept" else "judge_below"
    return JudgeResult(item.key, round(parsed.score, 4), parsed.rationale, status, reason, raw, attempts, key)


async def run_judge(
    *,
    gateway: Gateway,
    items: Sequence[JudgeItem],
    params: JudgeParams,
    emit: Callable[[list[JudgeResult]], None],
    should_stop: Callable[[], bool] = lambda: False,
) -> JudgeSummary:
    """Score every item, emitting results batch by batch in item order."""
    counts: Counter[str] = Counter()
    scores: list[float] = []

    def tally(results: list[JudgeResult]) -> None:
        for result in results:
            counts[result.status] += 1
            if result.score is not None:
                scores.append(result.score)
        emit(results)

    stop, message = await run_in_batches(
        items,
        lambda item: judge_one(gateway, item, params=params),
        batch_size=params.batch_size,
        emit=tally,
        should_stop=should_stop,
    )
    mean = sum(scores) / len(scores) if scores else None
    return JudgeSummary(counts["kept"], counts["rejected"], counts["unscored"], mean, stop, message)


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1  # ties share their average rank
        i = j + 1
    return ranks


def _pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx == 0 or syy == 0:
        return None  # a constant series has no correlation
    return sxy / math.sqrt(sxx * syy)


def agreement(judge_scores: Sequence[float | None], human_ratings: Sequence[float | None]) -> dict[str, Any]:
    """Judge vs human ratings on the records both scored: Pearson, Spearman, exact and within-1 agreement."""
    if len(judge_scores) != len(human_ratings):
        raise ValueError("judge_scores and human_ratings must be aligned (same length)")
    pairs = [
        (j, h) for j, h in zip(judge_scores, human_ratings, strict=True) if j is not None and h is not None
    ]
    js = [float(j) for j, _ in pairs]
    hs = [float(h) for _, h in pairs]
    n = len(pairs)
    pearson = _pearson(js, hs)
    spearman = _pearson(_ranks(js), _ranks(hs))
    return {
        "n": n,
        "pearson": None if pearson is None else round(pearson, 4),
        "spearman": None if spearman is None else round(spearman, 4),
        "exact": round(sum(round(j) == round(h) for j, h in pairs) / n, 4) if n else None,
        "within_1": round(sum(abs(j - h) <= 1 for j, h in pairs) / n, 4) if n else None,
        "mean_abs_diff": round(sum(abs(j - h) for j, h in pairs) / n, 4) if n else None,
    }
