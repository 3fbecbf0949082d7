"""Evaluation judging: answers of several systems to one prompt set turned into verdicts and win rates.

Pure: no database, no web. The evaluation service stores what this module returns (every model here is
pydantic, ``model_dump(mode="json")`` and back) and hands the stored verdicts back in to resume.

**Both orders.** LLM judges favour a position: in the MT-Bench paper (Zheng et al., 2023) GPT-4 gave the
same verdict in both orders only about 65 % of the time, and most of the rest favoured the answer shown
first. Every pair of systems is therefore judged twice per prompt, once with each system shown as
assistant A. A system wins a prompt only when the judge prefers it in both orders; a pair judged
differently in the two orders (the first position both times, or a win in one and a tie in the other) is
a **tie**. A judge that always names the first position thus yields nothing but ties, not a coin flip.

**Unreadable is not a tie.** A verdict we cannot parse is asked for again once (as ``judge.py`` does);
if it is still unreadable, that order is ``unparseable``, the comparison has no outcome, and it is counted
apart: silently calling it a tie would pull every win rate toward 0.5 and hide a broken judge.

**Win rate.** Wins plus half the ties over the decided comparisons, from the first system's side. Its
95 % interval is a percentile bootstrap over prompts (seeded, so a stored report can be recomputed).

**Length-controlled win rate.** Judges prefer longer answers, so a system can "win" by writing more. Per
pair we fit a logistic regression of the outcome (win 1, tie 0.5, loss 0) on the log ratio of the two
answers' lengths in tokens, and report the fitted win probability at a log ratio of zero, i.e. for
answers of equal length. It is AlpacaEval-LC's idea reduced to one pair at a time, without its
per-instruction term (that needs many systems on the same prompts); docs/evaluation.md says why the
log ratio and what the figure cannot tell.

Calls go through the gateway (``app.pipeline.llm``), which brings concurrency, cache, budget, retries
and costs: a resumed evaluation asks again only for what it has no stored verdict for, and anything it
does ask again is answered from the cache.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations
from statistics import median
from typing import Any, Generic, Literal, TypeVar

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from app.pipeline.llm import (
    BudgetExceeded,
    Gateway,
    Prompt,
    Sampling,
    TeacherError,
    TeacherUnavailable,
    approx_tokens,
    gather_or_cancel,
)
from app.pipeline.prompts import load_prompt, render_prompt

Choice = Literal["A", "B", "tie"]
"""What the judge picked, by position: the answer shown first (A), second (B), or neither."""
Outcome = Literal["a", "b", "tie"]
"""The same, by system: ``system_a``, ``system_b``, or neither."""
CallStatus = Literal["parsed", "unparseable", "teacher_error"]

# --------------------------------------------------------------------------------------------------
# Inputs and outputs


class EvalPrompt(BaseModel):
    """One prompt of the set, with what each system answered to it (system name -> answer)."""

    model_config = ConfigDict(frozen=True)

    id: str
    text: str
    category: str | None = None
    reference: str | None = Field(None, description="A reference answer; the judge sees it when set.")
    answers: dict[str, str] = Field(default_factory=dict)


class _JudgingParams(BaseModel):
    rubric: str | None = Field(None, description="The curator's rubric; default: the built-in one.")
    language: Literal["en", "zh"] = "en"
    use_reference: bool = Field(True, description="Show the prompt's reference answer to the judge.")
    sampling: Sampling = Field(default_factory=lambda: Sampling(temperature=0.0, max_tokens=512))
    batch_size: int = Field(
        32, ge=1, description="Comparisons (or scored answers) in flight, and per emitted batch."
    )


class PairwiseParams(_JudgingParams):
    """How to judge pairs; ``rubric`` replaces the built-in ``pairwise_rubric`` prompt."""


class ScoreParams(_JudgingParams):
    """How to score single answers 1–10; ``rubric`` replaces the built-in ``single_rubric`` prompt."""


class OrderJudgement(BaseModel):
    """The judge's answer for one order of one comparison."""

    swapped: bool
    """False: ``system_a`` was shown as assistant A; True: ``system_b`` was."""
    choice: Choice | None
    outcome: Outcome | None
    rationale: str
    raw: str
    """Everything the judge wrote (both attempts when it was asked again), or the teacher's error."""
    attempts: int
    status: CallStatus
    key: str | None
    """The first request's cache key: ties the judgement to its cache entry and ledger row."""


class PairVerdict(BaseModel):
    """One prompt, one pair of systems, judged in both orders."""

    prompt_id: str
    category: str | None
    system_a: str
    system_b: str
    ab: OrderJudgement
    """``system_a`` shown first."""
    ba: OrderJudgement
    """``system_b`` shown first."""
    outcome: Outcome | None
    """``None`` unless ``status`` is ``decided``."""
    status: Literal["decided", "unparseable", "teacher_error"]
    consistent: bool | None
    """Whether both orders named the same system (or both a tie); ``None`` when not decided."""

    def flipped(self) -> PairVerdict:
        """The same verdict seen from ``system_b``'s side."""
        swap: dict[Outcome | None, Outcome | None] = {"a": "b", "b": "a", "tie": "tie", None: None}
        return self.model_copy(
            update={
                "system_a": self.system_b,
                "system_b": self.system_a,
                "ab": self.ba.model_copy(update={"swapped": False, "outcome": swap[self.ba.outcome]}),
                "ba": self.ab.model_copy(update={"swapped": True, "outcome": swap[self.ab.outcome]}),
                "outcome": swap[self.outcome],
            }
        )


class ScoreVerdict(BaseModel):
    """One system's answer to one prompt, scored 1–10."""

    prompt_id: str
    category: str | None
    system: str
    score: float | None
    rationale: str
    raw: str
    attempts: int
    status: CallStatus
    key: str | None


class RunSummary(BaseModel):
    total: int
    """Comparisons (or answers) asked for, including those skipped as already judged."""
    skipped: int
    judged: int
    decided: int
    unparseable: int
    teacher_errors: int
    stop_reason: Literal["done", "stopped", "budget"]
    message: str = ""


class WinRate(BaseModel):
    """One pair of systems over all prompts (``category`` None) or one category, from ``system_a``'s side."""

    system_a: str
    system_b: str
    category: str | None
    n: int
    """Decided comparisons: the denominator of the win rate."""
    wins: int
    ties: int
    losses: int
    unparseable: int
    teacher_errors: int
    consistent: int
    """Decided comparisons whose two orders agreed; ``n - consistent`` ties come from position swaps."""
    win_rate: float | None
    ci_low: float | None
    ci_high: float | None
    lc_win_rate: float | None
    """Length-controlled win rate: the fitted win probability for answers of equal length."""
    lc_ci_low: float | None
    lc_ci_high: float | None
    length_coef: float | None
    """The fitted slope on log(tokens_a / tokens_b): > 0 means the judge favoured the longer answer."""
    mean_tokens_a: float | None
    mean_tokens_b: float | None
    share_a_longer: float | None
    """Share of decided comparisons where ``system_a``'s answer had more tokens. Near 0 or 1, one system is
    (almost) always the longer one, and the length-controlled figure extrapolates beyond the data."""


class LengthStats(BaseModel):
    system: str
    category: str | None
    n: int
    mean_chars: float
    median_chars: float
    mean_tokens: float
    median_tokens: float
    """Tokens as the gateway counts them for budgets (≈4 characters, or one CJK character, per token)."""


class ScoreStats(BaseModel):
    system: str
    category: str | None
    n: int
    unparseable: int
    teacher_errors: int
    mean: float | None
    ci_low: float | None
    ci_high: float | None


class PairwiseReport(BaseModel):
    win_rates: list[WinRate]
    lengths: list[LengthStats]
    seed: int
    resamples: int
    confidence: float


# --------------------------------------------------------------------------------------------------
# Parsing what judges write


@dataclass(frozen=True)
class ParsedVerdict:
    choice: Choice
    rationale: str


@dataclass(frozen=True)
class ParsedRating:
    score: float
    """On the 1–10 scale."""
    rationale: str


_BRACKET = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.I)
# A verdict cut off by max_tokens: "... so A is better. [[A" at the very end.
_BRACKET_CUT = re.compile(r"\[\[\s*([ABC])\s*\]?\s*$")
_JSON_OBJECT = re.compile(r"\{[^{}]*\}", re.S)
_VERDICT_KEYS = ("winner", "verdict", "better", "choice", "preferred", "preference", "decision", "result")
# The same keys read with a regex: a JSON object truncated after its verdict field still says it.
_JSON_FIELD = re.compile(r'"(?:' + "|".join(_VERDICT_KEYS) + r')"\s*:\s*"([^"]{1,40})"', re.I)
# The letters are case-sensitive inside case-insensitive patterns: "Verdict: a tie" is not a vote for A.
_DECLARATION = re.compile(
    r"(?:final\s+)?(?:verdict|decision|winner|judge?ment|choice|better\s+(?:answer|response))"
    r"\s*(?:is)?\s*[:：]?\s*[*\"'“(\[]*\s*(?:assistant|answer|response)?\s*(?:a\s+)?"
    r"((?-i:[ABC])\b|tie\b|draw\b)"
    r"|(?:最终)?(?:裁决|结论|判断|胜者)\s*(?:是|为)?\s*[:：]?\s*[*\"“(\[]*\s*(?:助手)?\s*(A|B|C|平局)",
    re.I,
)
_BETTER = re.compile(
    r"\b(?:assistant|answer|response)\s*((?-i:[AB]))\s*(?:'s\s+(?:answer|response)\s+)?is\s+"
    r"(?:clearly\s+|slightly\s+|much\s+|somewhat\s+|far\s+)?(?:the\s+)?better"
    r"|(?:助手|回答)\s*([AB])\s*(?:的回答)?\s*(?:明显|稍微|略)?更好",
    re.I,
)
_TIE_PHRASE = re.compile(
    r"\b(?:it'?s\s+a\s+tie|is\s+a\s+tie|equally\s+(?:good|bad|helpful|strong|weak|correct))\b"
    r"|平局|不相上下|难分高下|打成平手",
    re.I,
)


def _choice_of(value: str) -> Choice | None:
    v = re.sub(r"[\s*\"'“”.,:;!()\[\]_-]+", " ", value).strip().lower()
    v = re.sub(r"^(?:assistant|answer|response|model|助手|回答)\s*", "", v)
    if v in ("a", "first"):
        return "A"
    if v in ("b", "second"):
        return "B"
    if v in ("c", "tie", "draw", "equal", "both", "neither", "平局", "相同", "一样"):
        return "tie"
    return None


def _without(text: str, match: re.Match[str]) -> str:
    """The text less the verdict token, and the markdown emphasis left around it ("**[[A]]**")."""
    return (text[: match.start()] + text[match.end() :]).strip(" \t\r\n*")


def _json_verdict(text: str) -> ParsedVerdict | None:
    for match in _JSON_OBJECT.finditer(text):
        try:
            data: Any = json.loads(match.group(0))
        except json.JSONDecodeError:
            continue
        if not isinstance(data, dict):
            continue
        for key in _VERDICT_KEYS:
            value = data.get(key, data.get(key.capitalize()))
            choice = _choice_of(value) if isinstance(value, str) else None
            if choice is not None:
                reason = data.get("rationale") or data.get("reason") or data.get("explanation") or ""
                return ParsedVerdict(choice, str(reason).strip())
    return None


def parse_verdict(text: str) -> ParsedVerdict | None:
    """Which position a pairwise judge preferred, from what judges really write; ``None`` if we cannot tell.

    In order: MT-Bench's ``[[A]]`` / ``[[B]]`` / ``[[C]]`` (the last one, since a judge may first restate
    the format), a JSON object (``winner``, ``verdict``, ``choice``, ... even if cut short), a bracket cut
    off at the end of the text, a bare ``A`` / ``B`` / ``tie``, a declaration ("Final verdict: B",
    "最终裁决：A"), then loose phrases ("Assistant A is better", "equally good"). Loose phrases that
    disagree with each other are no verdict: we do not guess.
    """
    if not text or not text.strip():
        return None
    brackets = list(_BRACKET.finditer(text))
    if brackets:
        last = brackets[-1]
        choice = _choice_of(last.group(1))
        assert choice is not None  # the pattern only admits A, B, C and tie
        return ParsedVerdict(choice, _without(text, last))
    parsed = _json_verdict(text)
    if parsed:
        return parsed
    field = _JSON_FIELD.search(text)
    if field and (choice := _choice_of(field.group(1))):
        return ParsedVerdict(choice, text.strip())
    cut = _BRACKET_CUT.search(text)
    if cut and (choice := _choice_of(cut.group(1))):
        return ParsedVerdict(choice, _without(text, cut))
    bare = _choice_of(text)
    if bare:
        return ParsedVerdict(bare, "")
    declarations = list(_DECLARATION.finditer(text))
    if declarations:
        last = declarations[-1]
        choice = _choice_of(last.group(1) or last.group(2))
        if choice:
            return ParsedVerdict(choice, text.strip())
    loose: set[Choice] = set()
    for match in _BETTER.finditer(text):
        if choice := _choice_of(match.group(1) or match.group(2)):
            loose.add(choice)
    if _TIE_PHRASE.search(text):
        loose.add("tie")
    if len(loose) == 1:
        return ParsedVerdict(loose.pop(), text.strip())
    return None


_NUMBER = r"(\d+(?:\.\d+)?)"
_RATING_BRACKET = re.compile(rf"\[\[\s*{_NUMBER}\s*\]\]")
_RATING_CUT = re.compile(rf"\[\[\s*{_NUMBER}\s*\]?\s*$")
_RATING_KEYS = ("rating", "score", "Rating", "Score")


def _on_ten(value: float, scale: float = 10.0) -> float | None:
    """A rating on a 0/1–``scale`` scale mapped linearly onto 1–10; ``None`` when out of range."""
    if scale <= 1 or value < 0 or value > scale:
        return None
    if scale == 10:
        return max(1.0, value)
    return max(1.0, min(10.0, 1 + (value - 1) * 9 / (scale - 1)))


def _json_rating(text: str) -> ParsedRating | None:
    for match in _JSON_OBJECT.finditer(text):
        try:
            data: Any = json.loads(match.group(0))
        except json.JSONDecodeError:
            continue
        if not isinstance(data, dict):
            continue
        raw = next((data[k] for k in _RATING_KEYS if k in data), None)
        if raw is None or isinstance(raw, bool):
            continue
        try:
            value = float(raw)
            scale = float(data.get("scale") or data.get("max") or 10)
        except (TypeError, ValueError):
            continue
        score = _on_ten(value, scale)
        if score is not None:
            reason = data.get("rationale") or data.get("reason") or data.get("explanation") or ""
            return ParsedRating(score, str(reason).strip())
    return None


def parse_rating(text: str) -> ParsedRating | None:
    """A 1–10 rating from what judges write: ``Rating: [[7]]`` (MT-Bench), JSON, "7/10", "4/5" (mapped onto
    1–10), "8 out of 10", "Score: 6", "评分：7分", a bare number. ``None`` when no rating can be read, or the
    one given is off its scale ("[[12]]", "Score: 42") — never a guess."""
    if not text or not text.strip():
        return None
    brackets = list(_RATING_BRACKET.finditer(text))
    if brackets:
        score = _on_ten(float(brackets[-1].group(1)))
        return ParsedRating(score, _without(text, brackets[-1])) if score is not None else None
    parsed = _json_rating(text)
    if parsed:
        return parsed
    rationale = text.strip()
    cut = _RATING_CUT.search(text)
    if cut:
        score = _on_ten(float(cut.group(1)))
        return ParsedRating(score, _without(text, cut)) if score is not None else None
    for pattern in (rf"{_NUMBER}\s*/\s*(\d+)\b", rf"{_NUMBER}\s+out\s+of\s+(\d+)"):
        match = re.search(pattern, text, re.I)
        if match:
            score = _on_ten(float(match.group(1)), float(match.group(2)))
            return ParsedRating(score, rationale) if score is not None else None
    match = re.search(rf"(?:rating|score|评分|分数|得分)\W{{0,6}}{_NUMBER}", text, re.I)
    if match is None:
        match = re.search(rf"^\s*{_NUMBER}\s*(?:分)?\s*[.。]?\s*$", rationale.splitlines()[0])
    if match is None:
        match = re.search(rf"{_NUMBER}\s*分", text)
    if match:
        score = _on_ten(float(match.group(1)))
        return ParsedRating(score, rationale) if score is not None else None
    return None


# --------------------------------------------------------------------------------------------------
# Prompts


def _reference_section(prompt: EvalPrompt, params: _JudgingParams, template: str) -> str:
    if not (params.use_reference and prompt.reference and prompt.reference.strip()):
        return ""
    return render_prompt(template, params.language, reference=prompt.reference.strip())


def pairwise_prompt(prompt: EvalPrompt, answer_a: str, answer_b: str, *, params: PairwiseParams) -> str:
    """The judge's prompt with ``answer_a`` shown as assistant A."""
    rubric = params.rubric or load_prompt("pairwise_rubric", params.language).template.strip()
    return render_prompt(
        "pairwise",
        params.language,
        rubric=rubric,
        reference=_reference_section(prompt, params, "pairwise_reference"),
        question=prompt.text,
        answer_a=answer_a,
        answer_b=answer_b,
    )


def single_prompt(prompt: EvalPrompt, answer: str, *, params: ScoreParams) -> str:
    rubric = params.rubric or load_prompt("single_rubric", params.language).template.strip()
    return render_prompt(
        "single",
        params.language,
        rubric=rubric,
        reference=_reference_section(prompt, params, "single_reference"),
        question=prompt.text,
        answer=answer,
    )


def all_pairs(systems: Sequence[str]) -> list[tuple[str, str]]:
    """Every pair of distinct systems once, in the given order (the first named is ``system_a``)."""
    return list(combinations(dict.fromkeys(systems), 2))


@dataclass(frozen=True)
class Comparison:
    prompt: EvalPrompt
    system_a: str
    system_b: str


def plan_comparisons(prompts: Sequence[EvalPrompt], pairs: Sequence[tuple[str, str]]) -> list[Comparison]:
    """What a pairwise run judges, in order; a prompt that lacks either system's answer is left out."""
    return [
        Comparison(p, a, b) for p in prompts for a, b in pairs if a in p.answers and b in p.answers and a != b
    ]


def judge_calls(prompts: Sequence[EvalPrompt], pairs: Sequence[tuple[str, str]]) -> int:
    """Teacher calls a pairwise run makes without retries: two per comparison (both orders)."""
    return 2 * len(plan_comparisons(prompts, pairs))


# --------------------------------------------------------------------------------------------------
# Asking the judge

P = TypeVar("P")


@dataclass(frozen=True)
class _Asked(Generic[P]):
    parsed: P | None
    raw: str
    attempts: int
    status: CallStatus
    key: str | None


async def _ask(
    gateway: Gateway,
    prompt: str,
    *,
    parse: Callable[[str], P | None],
    retry_template: str,
    params: _JudgingParams,
    purpose: str,
) -> _Asked[P]:
    """One judge call, asked again once with a format reminder when its answer cannot be read."""
    try:
        first = await gateway.complete(prompt, purpose=purpose, sampling=params.sampling)
        parsed = parse(first.text)
        raw, attempts = first.text, 1
        if parsed is None:
            retry: Prompt = [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": first.text},
                {"role": "user", "content": render_prompt(retry_template, params.language)},
            ]
            second = await gateway.complete(
                retry, purpose=f"{purpose}.retry", sampling=params.sampling, sample_index=1
            )
            parsed = parse(second.text)
            raw, attempts = f"{first.text}\n---\n{second.text}", 2
    except TeacherUnavailable:
        raise
    except TeacherError as exc:
        return _Asked[P](None, str(exc)[:500], 0, "teacher_error", None)
    return _Asked[P](parsed, raw, attempts, "parsed" if parsed is not None else "unparseable", first.key)


_BY_POSITION: dict[tuple[bool, Choice], Outcome] = {
    (False, "A"): "a",
    (False, "B"): "b",
    (True, "A"): "b",
    (True, "B"): "a",
    (False, "tie"): "tie",
    (True, "tie"): "tie",
}


async def _judge_order(
    gateway: Gateway, comparison: Comparison, *, swapped: bool, params: PairwiseParams
) -> OrderJudgement:
    answers = comparison.prompt.answers
    first, second = (
        (comparison.system_b, comparison.system_a) if swapped else (comparison.system_a, comparison.system_b)
    )
    text = pairwise_prompt(comparison.prompt, answers[first], answers[second], params=params)
    asked = await _ask(
        gateway,
        text,
        parse=parse_verdict,
        retry_template="pairwise_retry",
        params=params,
        purpose="eval.pairwise",
    )
    verdict = asked.parsed
    return OrderJudgement(
        swapped=swapped,
        choice=verdict.choice if verdict else None,
        outcome=_BY_POSITION[(swapped, verdict.choice)] if verdict else None,
        rationale=verdict.rationale if verdict else "",
        raw=asked.raw,
        attempts=asked.attempts,
        status=asked.status,
        key=asked.key,
    )


def combine(comparison: Comparison, ab: OrderJudgement, ba: OrderJudgement) -> PairVerdict:
    """The tie rule: a system wins only if preferred in both orders; orders that disagree make a tie."""
    outcome: Outcome | None = None
    consistent: bool | None = None
    status: Literal["decided", "unparseable", "teacher_error"]
    if "teacher_error" in (ab.status, ba.status):
        status = "teacher_error"
    elif ab.outcome is None or ba.outcome is None:
        status = "unparseable"
    else:
        status = "decided"
        consistent = ab.outcome == ba.outcome
        outcome = ab.outcome if consistent else "tie"
    return PairVerdict(
        prompt_id=comparison.prompt.id,
        category=comparison.prompt.category,
        system_a=comparison.system_a,
        system_b=comparison.system_b,
        ab=ab,
        ba=ba,
        outcome=outcome,
        status=status,
        consistent=consistent,
    )


async def judge_pair(gateway: Gateway, comparison: Comparison, *, params: PairwiseParams) -> PairVerdict:
    """One comparison, both orders asked at once."""
    ab, ba = await gather_or_cancel(
        [
            _judge_order(gateway, comparison, swapped=False, params=params),
            _judge_order(gateway, comparison, swapped=True, params=params),
        ]
    )
    return combine(comparison, ab, ba)


async def score_answer(
    gateway: Gateway, prompt: EvalPrompt, system: str, *, params: ScoreParams
) -> ScoreVerdict:
    text = single_prompt(prompt, prompt.answers[system], params=params)
    asked = await _ask(
        gateway, text, parse=parse_rating, retry_template="single_retry", params=params, purpose="eval.single"
    )
    rating = asked.parsed
    return ScoreVerdict(
        prompt_id=prompt.id,
        category=prompt.category,
        system=system,
        score=round(rating.score, 4) if rating else None,
        rationale=rating.rationale if rating else "",
        raw=asked.raw,
        attempts=asked.attempts,
        status=asked.status,
        key=asked.key,
    )


V = TypeVar("V", PairVerdict, ScoreVerdict)


async def _run_window(
    tasks: Sequence[Callable[[], Awaitable[V]]],
    *,
    total: int,
    batch_size: int,
    emit: Callable[[list[V]], None],
    should_stop: Callable[[], bool],
    is_decided: Callable[[V], bool],
) -> RunSummary:
    """Run ``tasks`` with ``batch_size`` of them in flight, emitting results in task order, ``batch_size`` at a
    time (the rest at the end).

    A sliding window, not batch after batch: with a barrier per batch, one slow comparison (a judge
    that takes 20 s, a verdict asked for again) idles every other slot until it ends. Results that finish
    ahead of an earlier one wait for it, so at most a window of finished, paid-for verdicts is not yet
    emitted when a worker dies; their answers are in the gateway's cache, so asking again is free.
    ``should_stop`` is polled once per ``batch_size`` started tasks (it may cost a database read). On a stop
    or an exhausted budget, the finished prefix is emitted and everything in flight is cancelled.
    """
    judged = decided = unparseable = errors = 0
    stop: Literal["done", "stopped", "budget"] = "done"
    message = ""
    in_flight: dict[asyncio.Future[V], int] = {}
    finished: dict[int, V] = {}
    ready: list[V] = []
    started = emitted = 0

    def flush(*, final: bool) -> None:
        nonlocal emitted, judged, decided, unparseable, errors, ready
        while emitted in finished:
            ready.append(finished.pop(emitted))
            emitted += 1
        while ready and (final or len(ready) >= batch_size):
            chunk, ready = ready[:batch_size], ready[batch_size:]
            for result in chunk:
                judged += 1
                decided += is_decided(result)
                unparseable += result.status == "unparseable"
                errors += result.status == "teacher_error"
            emit(chunk)

    try:
        while started < len(tasks) or in_flight:
            while started < len(tasks) and len(in_flight) < batch_size and stop == "done":
                if started % batch_size == 0 and should_stop():
                    stop = "stopped"
                    break
                in_flight[asyncio.ensure_future(tasks[started]())] = started
                started += 1
            if not in_flight:
                break
            done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                finished[in_flight.pop(future)] = future.result()
            flush(final=False)
    except BudgetExceeded as exc:
        stop, message = "budget", str(exc)
    finally:
        for future in in_flight:
            future.cancel()
        await asyncio.gather(*in_flight, return_exceptions=True)
    flush(final=True)
    return RunSummary(
        total=total,
        skipped=total - len(tasks),
        judged=judged,
        decided=decided,
        unparseable=unparseable,
        teacher_errors=errors,
        stop_reason=stop,
        message=message,
    )


async def run_pairwise(
    *,
    gateway: Gateway,
    prompts: Sequence[EvalPrompt],
    pairs: Sequence[tuple[str, str]],
    params: PairwiseParams,
    emit: Callable[[list[PairVerdict]], None],
    done: Iterable[PairVerdict] = (),
    should_stop: Callable[[], bool] = lambda: False,
) -> RunSummary:
    """Judge every comparison in both orders, emitting verdicts batch by batch in plan order.

    Comparisons with a stored verdict in ``done`` (either orientation) are skipped, except those that
    ended in a teacher error: the endpoint may answer now. An unparseable verdict is final; asking again
    would only get the cached answer back.
    """
    finished = {
        key
        for v in done
        if v.status != "teacher_error"
        for key in ((v.prompt_id, v.system_a, v.system_b), (v.prompt_id, v.system_b, v.system_a))
    }
    plan = plan_comparisons(prompts, pairs)
    todo = [c for c in plan if (c.prompt.id, c.system_a, c.system_b) not in finished]

    def task(c: Comparison) -> Callable[[], Awaitable[PairVerdict]]:
        return lambda: judge_pair(gateway, c, params=params)

    return await _run_window(
        [task(c) for c in todo],
        total=len(plan),
        batch_size=params.batch_size,
        emit=emit,
        should_stop=should_stop,
        is_decided=lambda v: v.status == "decided",
    )


async def run_scoring(
    *,
    gateway: Gateway,
    prompts: Sequence[EvalPrompt],
    systems: Sequence[str],
    params: ScoreParams,
    emit: Callable[[list[ScoreVerdict]], None],
    done: Iterable[ScoreVerdict] = (),
    should_stop: Callable[[], bool] = lambda: False,
) -> RunSummary:
    """Score every system's answer to every prompt 1–10; resumes like :func:`run_pairwise`."""
    finished = {(v.prompt_id, v.system) for v in done if v.status != "teacher_error"}
    plan = [(p, s) for p in prompts for s in dict.fromkeys(systems) if s in p.answers]
    todo = [(p, s) for p, s in plan if (p.id, s) not in finished]

    def task(p: EvalPrompt, s: str) -> Callable[[], Awaitable[ScoreVerdict]]:
        return lambda: score_answer(gateway, p, s, params=params)

    return await _run_window(
        [task(p, s) for p, s in todo],
        total=len(plan),
        batch_size=params.batch_size,
        emit=emit,
        should_stop=should_stop,
        is_decided=lambda v: v.status == "parsed",
    )


# --------------------------------------------------------------------------------------------------
# Statistics

# Resamples of the bootstrap: with 1,000 the 2.5 % and 97.5 % percentiles move by about ±0.01 between
# seeds on 100 prompts, well inside the interval's own width (~0.2); more buys nothing the reader sees.
DEFAULT_RESAMPLES = 1000
# The length model's penalties (a Gaussian prior on each coefficient, in log-odds). On the slope, 1 per
# unit of log length ratio keeps the fit finite when length separates the outcomes perfectly (then the
# unpenalised slope is infinite) and is soon outweighed by the data: 20 decided prompts of varied lengths
# carry several times that information. On the intercept, 0.01 (a prior sd of 10) only matters when
# every outcome is the same, where it keeps the figure just short of 0 or 1 instead of diverging.
_LC_SLOPE_PENALTY = 1.0
_LC_INTERCEPT_PENALTY = 0.01
_LC_MAX_STEP = 5.0
_LC_ITERATIONS = 100
_SCORE_OF: dict[Outcome, float] = {"a": 1.0, "tie": 0.5, "b": 0.0}


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _resample_index(n: int, *, seed: int, resamples: int) -> NDArray[np.intp]:
    return _rng(seed).integers(0, n, size=(resamples, n))


def _interval(stats: NDArray[np.float64], confidence: float) -> tuple[float, float]:
    alpha = (1 - confidence) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return float(low), float(high)


def bootstrap_interval(
    values: Sequence[float], *, seed: int = 0, resamples: int = DEFAULT_RESAMPLES, confidence: float = 0.95
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of ``values`` (prompts resampled with replacement)."""
    if not values:
        return None
    data = np.asarray(values, dtype=np.float64)
    means = data[_resample_index(len(data), seed=seed, resamples=resamples)].mean(axis=1)
    return _interval(means, confidence)


def _fit_length_model(
    x: NDArray[np.float64], y: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Penalised logistic regression ``y ~ sigmoid(b0 + b1 * x)``, row by row: x and y are (fits, n).

    Damped Newton steps on a strictly concave objective (the penalties make it so), vectorised over the
    rows so that the bootstrap's thousand refits cost one fit's Python overhead.
    """
    rows = x.shape[0]
    b0 = np.zeros(rows)
    b1 = np.zeros(rows)
    for _ in range(_LC_ITERATIONS):
        z = np.clip(b0[:, None] + b1[:, None] * x, -35, 35)
        p = 1 / (1 + np.exp(-z))
        w = p * (1 - p)
        r = y - p
        g0 = r.sum(axis=1) - _LC_INTERCEPT_PENALTY * b0
        g1 = (r * x).sum(axis=1) - _LC_SLOPE_PENALTY * b1
        h00 = w.sum(axis=1) + _LC_INTERCEPT_PENALTY
        h01 = (w * x).sum(axis=1)
        h11 = (w * x * x).sum(axis=1) + _LC_SLOPE_PENALTY
        det = h00 * h11 - h01 * h01
        d0 = (h11 * g0 - h01 * g1) / det
        d1 = (h00 * g1 - h01 * g0) / det
        size = np.maximum(np.abs(d0), np.abs(d1))
        scale = np.minimum(1.0, _LC_MAX_STEP / np.maximum(size, 1e-300))
        b0 += d0 * scale
        b1 += d1 * scale
        if float(size.max()) < 1e-9:
            break
    return b0, b1


def _sigmoid(z: NDArray[np.float64]) -> NDArray[np.float64]:
    result: NDArray[np.float64] = 1 / (1 + np.exp(-np.clip(z, -35, 35)))
    return result


@dataclass(frozen=True)
class LengthControlled:
    win_rate: float
    coef: float
    interval: tuple[float, float]


def length_controlled_win_rate(
    outcomes: Sequence[float],
    tokens_a: Sequence[int],
    tokens_b: Sequence[int],
    *,
    seed: int = 0,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
) -> LengthControlled | None:
    """The win rate the judge would give at equal lengths, with its bootstrap interval.

    ``outcomes`` are 1 (win), 0.5 (tie), 0 (loss) from system a's side; the regressor is
    ``log((tokens_a + 1) / (tokens_b + 1))``, which is 0 for equal lengths, changes sign when the systems
    swap, and treats "twice as long" alike for a 20-token and a 2,000-token answer.
    """
    if not outcomes:
        return None
    y = np.asarray(outcomes, dtype=np.float64)
    x = np.log((np.asarray(tokens_a, dtype=np.float64) + 1) / (np.asarray(tokens_b, dtype=np.float64) + 1))
    b0, b1 = _fit_length_model(x[None, :], y[None, :])
    index = _resample_index(len(y), seed=seed, resamples=resamples)
    boot0, _ = _fit_length_model(x[index], y[index])
    return LengthControlled(
        win_rate=float(_sigmoid(b0)[0]), coef=float(b1[0]), interval=_interval(_sigmoid(boot0), confidence)
    )


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _latest(verdicts: Iterable[PairVerdict]) -> list[PairVerdict]:
    """One verdict per comparison (the last given), each oriented as its pair was first seen."""
    oriented: dict[frozenset[str], tuple[str, str]] = {}
    latest: dict[tuple[str, str, str], PairVerdict] = {}
    for v in verdicts:
        a, b = oriented.setdefault(frozenset((v.system_a, v.system_b)), (v.system_a, v.system_b))
        latest[(v.prompt_id, a, b)] = v if v.system_a == a else v.flipped()
    return list(latest.values())


def _win_rate(
    system_a: str,
    system_b: str,
    category: str | None,
    verdicts: Sequence[PairVerdict],
    tokens: dict[tuple[str, str], int],
    *,
    seed: int,
    resamples: int,
    confidence: float,
) -> WinRate:
    # In prompt order, so that the bootstrap's resamples (drawn by position) and hence the interval do not
    # depend on the order the verdicts were stored or emitted in.
    decided = sorted((v for v in verdicts if v.outcome is not None), key=lambda v: v.prompt_id)
    y = [_SCORE_OF[v.outcome] for v in decided if v.outcome is not None]
    ta = [tokens[(v.prompt_id, system_a)] for v in decided]
    tb = [tokens[(v.prompt_id, system_b)] for v in decided]
    ci = bootstrap_interval(y, seed=seed, resamples=resamples, confidence=confidence)
    lc = length_controlled_win_rate(y, ta, tb, seed=seed, resamples=resamples, confidence=confidence)
    return WinRate(
        system_a=system_a,
        system_b=system_b,
        category=category,
        n=len(decided),
        wins=sum(v.outcome == "a" for v in decided),
        ties=sum(v.outcome == "tie" for v in decided),
        losses=sum(v.outcome == "b" for v in decided),
        unparseable=sum(v.status == "unparseable" for v in verdicts),
        teacher_errors=sum(v.status == "teacher_error" for v in verdicts),
        consistent=sum(bool(v.consistent) for v in decided),
        win_rate=_r(sum(y) / len(y)) if y else None,
        ci_low=_r(ci[0]) if ci else None,
        ci_high=_r(ci[1]) if ci else None,
        lc_win_rate=_r(lc.win_rate) if lc else None,
        lc_ci_low=_r(lc.interval[0]) if lc else None,
        lc_ci_high=_r(lc.interval[1]) if lc else None,
        length_coef=_r(lc.coef) if lc else None,
        mean_tokens_a=_r(sum(ta) / len(ta)) if ta else None,
        mean_tokens_b=_r(sum(tb) / len(tb)) if tb else None,
        share_a_longer=_r(sum(a > b for a, b in zip(ta, tb, strict=True)) / len(ta)) if ta else None,
    )


def length_stats(prompts: Sequence[EvalPrompt]) -> list[LengthStats]:
    """Answer lengths per system, over all prompts (``category`` None) and per category."""
    groups: dict[tuple[str, str | None], list[str]] = defaultdict(list)
    for p in prompts:
        for system, answer in p.answers.items():
            groups[(system, None)].append(answer)
            if p.category is not None:
                groups[(system, p.category)].append(answer)
    stats = []
    for (system, category), answers in groups.items():
        chars = [len(a) for a in answers]
        toks = [approx_tokens(a) for a in answers]
        stats.append(
            LengthStats(
                system=system,
                category=category,
                n=len(answers),
                mean_chars=round(sum(chars) / len(chars), 2),
                median_chars=float(median(chars)),
                mean_tokens=round(sum(toks) / len(toks), 2),
                median_tokens=float(median(toks)),
            )
        )
    return sorted(stats, key=lambda s: (s.category is not None, s.category or "", s.system))


def summarise_pairwise(
    prompts: Sequence[EvalPrompt],
    verdicts: Iterable[PairVerdict],
    *,
    seed: int = 0,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
) -> PairwiseReport:
    """Win / tie / loss, win rate with its interval and the length-controlled win rate, per pair of systems,
    over all prompts and per category; answer lengths per system beside them.

    Each interval is computed with the same ``seed``, so a figure does not depend on which other pairs or
    categories were summarised with it.
    """
    tokens = {(p.id, s): approx_tokens(a) for p in prompts for s, a in p.answers.items()}
    by_pair: dict[tuple[str, str], list[PairVerdict]] = defaultdict(list)
    for v in _latest(verdicts):
        for system in (v.system_a, v.system_b):
            if (v.prompt_id, system) not in tokens:
                raise ValueError(
                    f"a verdict on prompt {v.prompt_id!r} compares {system!r}, "
                    "which has no answer to that prompt among the prompts given"
                )
        by_pair[(v.system_a, v.system_b)].append(v)
    rates: list[WinRate] = []
    for (a, b), group in by_pair.items():
        kwargs: dict[str, Any] = {"seed": seed, "resamples": resamples, "confidence": confidence}
        rates.append(_win_rate(a, b, None, group, tokens, **kwargs))
        categories = sorted({v.category for v in group if v.category is not None})
        for category in categories:
            in_category = [v for v in group if v.category == category]
            rates.append(_win_rate(a, b, category, in_category, tokens, **kwargs))
    return PairwiseReport(
        win_rates=rates, lengths=length_stats(prompts), seed=seed, resamples=resamples, confidence=confidence
    )


def summarise_scores(
    verdicts: Iterable[ScoreVerdict],
    *,
    seed: int = 0,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
) -> list[ScoreStats]:
    """Mean 1–10 score per system, over all prompts (``category`` None) and per category, with intervals."""
    latest = {(v.prompt_id, v.system): v for v in verdicts}
    groups: dict[tuple[str, str | None], list[ScoreVerdict]] = defaultdict(list)
    for v in latest.values():
        groups[(v.system, None)].append(v)
        if v.category is not None:
            groups[(v.system, v.category)].append(v)
    stats = []
    for (system, category), group in groups.items():
        scores = [v.score for v in group if v.score is not None]
        ci = bootstrap_interval(scores, seed=seed, resamples=resamples, confidence=confidence)
        stats.append(
            ScoreStats(
                system=system,
                category=category,
                n=len(scores),
                unparseable=sum(v.status == "unparseable" for v in group),
                teacher_errors=sum(v.status == "teacher_error" for v in group),
                mean=_r(sum(scores) / len(scores)) if scores else None,
                ci_low=_r(ci[0]) if ci else None,
                ci_high=_r(ci[1]) if ci else None,
            )
        )
    return sorted(stats, key=lambda s: (s.category is not None, s.category or "", s.system))
