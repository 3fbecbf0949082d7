"""Judging candidates: an LLM judge rates each candidate response on the UltraFeedback aspects
(helpfulness, honesty, instruction following, harmlessness; Cui et al., 2023), 1-5 each with a rationale,
and compares pairs of candidates of the same prompt in both orders.

Pure: no database, no web. The pairwise half is app.pipeline.pairwise's (``judge_pair``: both orders, the
tie rule, a re-ask when a verdict cannot be read), with the preference rubric instead of the evaluation
one; a candidate is a "system" named ``c<candidate id>`` of a one-prompt set. Aspect ratings are asked for
as JSON on the last line; an answer without all four readable ratings is asked for again once (as the
evaluation judge does), then counted ``unparseable``, never guessed.

Every call is independent of the others, so both halves go through the shared batch loop
(``llm.run_in_batches``).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from app.pipeline.llm import Gateway, Sampling, run_in_batches
from app.pipeline.pairwise import (
    Comparison,
    EvalPrompt,
    PairVerdict,
    PairwiseParams,
    _ask,
    judge_pair,
)
from app.pipeline.prompts import load_prompt, render_prompt

ASPECTS = ("helpfulness", "honesty", "instruction_following", "harmlessness")
_JSON_OBJECT = re.compile(r"\{[^{}]*\}", re.S)
_ASPECT_LINE = {a: re.compile(rf"{a}\W{{0,6}}([1-5])(?!\d)", re.I) for a in ASPECTS}


class RankParams(BaseModel):
    language: Literal["en", "zh"] = "en"
    rubric: str | None = Field(None, description="The pairwise rubric; default: the preference rubric.")
    sampling: Sampling = Field(default_factory=lambda: Sampling(temperature=0.0, max_tokens=512))
    batch_size: int = Field(16, ge=1)

    def pairwise(self) -> PairwiseParams:
        rubric = self.rubric or load_prompt("preference_rubric", self.language).template.strip()
        return PairwiseParams(
            rubric=rubric,
            language=self.language,
            use_reference=False,
            sampling=self.sampling,
            batch_size=self.batch_size,
        )


@dataclass(frozen=True)
class ScoreItem:
    key: str  # "rec:<record id>"
    candidate_id: int
    question: str
    answer: str


@dataclass(frozen=True)
class AspectScores:
    key: str
    candidate_id: int
    scores: dict[str, int] | None
    rationale: str
    raw: str
    attempts: int
    status: Literal["parsed", "unparseable", "teacher_error"]
    prompt_hash: str | None


@dataclass(frozen=True)
class ParsedAspects:
    scores: dict[str, int]
    rationale: str


def _rating(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) and float(value).is_integer() and 1 <= value <= 5:
        return int(value)
    if isinstance(value, str) and value.strip() in {"1", "2", "3", "4", "5"}:
        return int(value.strip())
    return None


def parse_aspects(text: str) -> ParsedAspects | None:
    """All four ratings from the judge's answer: the last JSON object that has them, else one
    ``aspect: n`` per aspect; None when any is missing or outside 1-5. The rationale is the text before."""
    for match in reversed(list(_JSON_OBJECT.finditer(text))):
        try:
            data = json.loads(match.group(0))
        except json.JSONDecodeError:
            continue
        if not isinstance(data, dict):
            continue
        scores = {a: _rating(data.get(a)) for a in ASPECTS}
        if all(v is not None for v in scores.values()):
            rationale = str(data.get("rationale") or "").strip() or text[: match.start()].strip()
            return ParsedAspects({a: int(v) for a, v in scores.items() if v is not None}, rationale)
    found: dict[str, int] = {}
    first = len(text)
    for aspect, pattern in _ASPECT_LINE.items():
        hits = list(pattern.finditer(text))
        if not hits:
            return None
        found[aspect] = int(hits[-1].group(1))
        first = min(first, hits[-1].start())
    return ParsedAspects(found, text[:first].strip())


def aspects_prompt(item: ScoreItem, *, params: RankParams) -> str:
    return render_prompt("aspects", params.language, question=item.question, answer=item.answer)


async def score_candidate(gateway: Gateway, item: ScoreItem, *, params: RankParams) -> AspectScores:
    asked = await _ask(
        gateway,
        aspects_prompt(item, params=params),
        parse=parse_aspects,
        retry_template="aspects_retry",
        params=params.pairwise(),
        purpose="rank.aspects",
    )
    parsed = asked.parsed
    return AspectScores(
        key=item.key,
        candidate_id=item.candidate_id,
        scores=parsed.scores if parsed else None,
        rationale=parsed.rationale if parsed else "",
        raw=asked.raw,
        attempts=asked.attempts,
        status=asked.status,
        prompt_hash=asked.key,
    )


def candidate_name(candidate_id: int) -> str:
    return f"c{candidate_id}"


def comparison(key: str, question: str, a: tuple[int, str], b: tuple[int, str]) -> Comparison:
    """Candidates `a` and `b` (id, text) of one prompt as the evaluation judge compares two systems."""
    prompt = EvalPrompt(
        id=key,
        text=question,
        answers={candidate_name(a[0]): a[1], candidate_name(b[0]): b[1]},
    )
    return Comparison(prompt, candidate_name(a[0]), candidate_name(b[0]))


@dataclass(frozen=True)
class RankSummary:
    counts: dict[str, int]
    stop_reason: Literal["done", "stopped", "budget"]
    message: str = ""


async def run_rank(
    *,
    gateway: Gateway,
    scores: Sequence[ScoreItem],
    pairs: Sequence[Comparison],
    params: RankParams,
    emit_scores: Callable[[list[AspectScores]], None],
    emit_pairs: Callable[[list[PairVerdict]], None],
    should_stop: Callable[[], bool] = lambda: False,
) -> RankSummary:
    """Rate every candidate, then judge every pair in both orders; each half emits batch by batch."""
    counts: Counter[str] = Counter()

    def tally_scores(results: list[AspectScores]) -> None:
        counts.update(f"scores_{r.status}" for r in results)
        emit_scores(results)

    def tally_pairs(results: list[PairVerdict]) -> None:
        counts.update(f"pairs_{r.status}" for r in results)
        emit_pairs(results)

    stop, message = await run_in_batches(
        scores,
        lambda item: score_candidate(gateway, item, params=params),
        batch_size=params.batch_size,
        emit=tally_scores,
        should_stop=should_stop,
    )
    if stop == "done":
        pairwise = params.pairwise()
        stop, message = await run_in_batches(
            pairs,
            lambda c: judge_pair(gateway, c, params=pairwise),
            batch_size=params.batch_size,
            emit=tally_pairs,
            should_stop=should_stop,
        )
    return RankSummary(dict(counts), stop, message)
