"""Evol-Instruct (Xu et al., 2023, WizardLM): in-depth and in-breadth evolution with elimination.

Each round every item in the pool is rewritten once by an operation picked with an RNG seeded by
(seed, round, item key), answered by the teacher, and checked. A failed evolution is recorded with its
reason and its parent stays in the pool for the next round; a kept one replaces its parent. Like
Self-Instruct, the run is deterministic given the response cache, so a re-run pays for nothing twice.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from app.pipeline.listparse import parse_equal
from app.pipeline.llm import (
    BudgetExceeded,
    Gateway,
    Sampling,
    TeacherError,
    TeacherUnavailable,
    gather_or_cancel,
)
from app.pipeline.prompts import render_prompt
from app.pipeline.self_instruct import GenEvent, GenProgress, GenRecord

Operation = Literal["constraints", "deepening", "concretizing", "reasoning", "complicate_input", "breadth"]
ALL_OPERATIONS: tuple[Operation, ...] = (
    "constraints",
    "deepening",
    "concretizing",
    "reasoning",
    "complicate_input",
    "breadth",
)
IN_DEPTH: frozenset[str] = frozenset(ALL_OPERATIONS) - {"breadth"}

# Words of the rewriting prompt itself: an evolved instruction containing them copied the prompt.
_PROMPT_WORDS = re.compile(
    r"#?\s*(?:given|rewritten|created)\s+prompt\s*#?|#(?:给定提示|改写提示|新提示)#|给定提示|改写提示",
    re.IGNORECASE,
)
_SORRY = re.compile(r"\bsorry\b|\bI apologi[sz]e\b|抱歉|对不起", re.IGNORECASE)
_STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
        "if",
        "of",
        "to",
        "in",
        "on",
        "at",
        "by",
        "for",
        "with",
        "from",
        "as",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "i",
        "you",
        "he",
        "she",
        "we",
        "they",
        "me",
        "him",
        "her",
        "us",
        "them",
        "my",
        "your",
        "our",
        "their",
        "not",
        "no",
        "yes",
        "so",
        "than",
        "then",
        "there",
        "here",
        "what",
        "which",
        "who",
        "whom",
        "how",
        "why",
        "when",
        "where",
        "all",
        "any",
        "some",
        "such",
        "can",
        "could",
        "would",
        "should",
        "will",
        "shall",
        "may",
        "might",
        "must",
        "do",
        "does",
        "did",
        "done",
        "have",
        "has",
        "had",
        "的",
        "了",
        "和",
        "是",
        "在",
        "也",
        "就",
        "都",
        "而",
        "及",
        "与",
        "着",
        "或",
        "一个",
        "没有",
        "我",
        "你",
        "他",
        "她",
        "它",
        "我们",
        "你们",
        "他们",
        "这",
        "那",
        "之",
        "以",
        "于",
        "吗",
        "呢",
        "吧",
        "啊",
    ]
)


@dataclass(frozen=True)
class EvolItem:
    key: str
    instruction: str
    input: str = ""
    output: str = ""


class EvolParams(BaseModel):
    rounds: int = Field(4, ge=1, description="Evolution rounds (M in the paper).")
    operations: list[Operation] = Field(default_factory=lambda: list(ALL_OPERATIONS))
    language: Literal["en", "zh"] = "en"
    sampling: Sampling = Field(default_factory=lambda: Sampling(temperature=1.0, max_tokens=1024))
    answer_sampling: Sampling = Field(default_factory=lambda: Sampling(temperature=0.7, max_tokens=1024))
    seed: int = 0
    batch_size: int = Field(64, ge=1, description="Items per emitted batch within a round.")
    sorry_max_words: int = Field(80, ge=1, description="A 'sorry' answer shorter than this is a failure.")


StopReason = Literal["done", "stopped", "budget"]


@dataclass(frozen=True)
class EvolResult:
    kept: int
    rejected: int
    rejected_by_reason: dict[str, int]
    rounds: int
    stop_reason: StopReason
    message: str = ""


@dataclass(frozen=True)
class _Current:
    """An item's latest accepted version: what the next round evolves."""

    root: str
    key: str
    text: str


def copies_prompt_words(instruction: str) -> bool:
    return bool(_PROMPT_WORDS.search(instruction))


def word_count(text: str) -> int:
    cjk = len(re.findall(r"[\u3400-\u9fff]", text))
    return len(re.findall(r"[^\W\d_]+|\d+", re.sub(r"[\u3400-\u9fff]", " ", text))) + cjk


def is_sorry_short(answer: str, *, max_words: int = 80) -> bool:
    return bool(_SORRY.search(answer)) and word_count(answer) < max_words


def only_punctuation_and_stop_words(answer: str) -> bool:
    words = re.findall(r"[^\W_]+", answer.lower())
    # Chinese has no spaces: match multi-character stop words first, then single characters.
    leftovers: list[str] = []
    for word in words:
        if word in _STOP_WORDS:
            continue
        if re.search(r"[\u3400-\u9fff]", word):
            rest = word
            for stop in sorted((s for s in _STOP_WORDS if not s.isascii()), key=len, reverse=True):
                rest = rest.replace(stop, "")
            if rest:
                leftovers.append(rest)
        else:
            leftovers.append(word)
    return not leftovers


def _prompt_text(item: EvolItem) -> str:
    return f"{item.instruction.strip()}\n{item.input.strip()}".strip()


async def run_evol(
    *,
    gateway: Gateway,
    items: list[EvolItem],
    params: EvolParams,
    emit: Callable[[GenEvent], None],
    should_stop: Callable[[], bool] = lambda: False,
) -> EvolResult:
    """Evolve ``items`` for ``params.rounds`` rounds. A reached budget returns with ``stop_reason="budget"``."""
    if not params.operations:
        raise ValueError("Evol-Instruct needs at least one operation")
    pool = [_Current(root=item.key, key=item.key, text=_prompt_text(item)) for item in items]
    by_reason: Counter[str] = Counter()
    kept = rejected = 0
    stop_reason: StopReason = "done"
    message = ""
    rounds_done = 0
    for round_no in range(params.rounds):
        for start in range(0, len(pool), params.batch_size):
            if should_stop():
                stop_reason = "stopped"
                break
            chunk = pool[start : start + params.batch_size]
            try:
                outcomes = await gather_or_cancel([_evolve(gateway, cur, round_no, params) for cur in chunk])
            except BudgetExceeded as exc:
                stop_reason, message = "budget", str(exc)
                break
            records = []
            for n, (cur, record) in enumerate(zip(chunk, outcomes, strict=True)):
                records.append(record)
                if record.status == "kept":
                    kept += 1
                    pool[start + n] = _Current(root=cur.root, key=record.key, text=record.instruction)
                else:
                    rejected += 1
                    by_reason[record.reason or "unknown"] += 1
            emit(
                GenEvent(
                    round=round_no,
                    records=tuple(records),
                    progress=GenProgress(
                        round=round_no,
                        target=len(items) * params.rounds,
                        kept=kept,
                        records_kept=kept,
                        records_rejected=rejected,
                        rejected_by_reason=dict(by_reason),
                    ),
                )
            )
        if stop_reason != "done":
            break
        rounds_done = round_no + 1
    return EvolResult(kept, rejected, dict(by_reason), rounds_done, stop_reason, message)


def pick_operation(params: EvolParams, round_no: int, root_key: str) -> Operation:
    return random.Random(f"{params.seed}:{round_no}:{root_key}").choice(params.operations)


async def _evolve(gateway: Gateway, cur: _Current, round_no: int, params: EvolParams) -> GenRecord:
    op = pick_operation(params, round_no, cur.root)
    lang = params.language
    key = f"ev:{round_no}:{cur.root}"

    def record(
        instruction: str, output: str, status: Literal["kept", "rejected"], reason: str | None, **kw: object
    ) -> GenRecord:
        return GenRecord(
            key=key,
            instruction=instruction,
            input="",
            output=output,
            status=status,
            reason=reason,
            source=f"evol:{op}",
            teacher_model=gateway.model,
            round=round_no,
            parent_key=cur.key,
            operation=op,
            **kw,  # type: ignore[arg-type]
        )

    try:
        rewrite = await gateway.complete(
            render_prompt(f"evol_{op}", lang, instruction=cur.text),
            purpose=f"evol.{op}",
            sampling=params.sampling,
            sample_index=round_no,
        )
    except TeacherUnavailable:
        raise
    except TeacherError as exc:
        return record("", "", "rejected", "teacher_error", detail=str(exc)[:200])
    evolved = rewrite.text.strip()
    if not evolved or rewrite.finish_reason == "length":
        return record(evolved, "", "rejected", "empty_evolution", prompt_hash=rewrite.key)
    if copies_prompt_words(evolved):
        return record(evolved, "", "rejected", "copied_prompt_words", prompt_hash=rewrite.key)

    # Cheap before costly: the equality check needs only the two instructions, the answer is longer.
    equal = await _safe_complete(
        gateway,
        render_prompt("evol_equal", lang, first=cur.text, second=evolved),
        purpose="evol.equal",
        sampling=Sampling(temperature=0.0, max_tokens=8),
    )
    verdict = parse_equal(equal) if equal is not None else None
    if verdict:
        return record(
            evolved,
            "",
            "rejected",
            "no_information_gain",
            detail="judged Equal to its parent",
            prompt_hash=rewrite.key,
        )
    answer = await _safe_complete(
        gateway, evolved, purpose="evol.answer", sampling=params.answer_sampling, sample_index=round_no
    )
    if answer is None:
        return record(evolved, "", "rejected", "teacher_error", prompt_hash=rewrite.key)
    meta = {"equal_check": equal, "equal_unparsed": verdict is None}
    if is_sorry_short(answer, max_words=params.sorry_max_words):
        return record(
            evolved, answer, "rejected", "sorry_short_response", prompt_hash=rewrite.key, metadata=meta
        )
    if only_punctuation_and_stop_words(answer):
        return record(evolved, answer, "rejected", "empty_response", prompt_hash=rewrite.key, metadata=meta)
    return record(evolved, answer, "kept", None, prompt_hash=rewrite.key, metadata=meta)


async def _safe_complete(
    gateway: Gateway, prompt: str, *, purpose: str, sampling: Sampling, sample_index: int = 0
) -> str | None:
    try:
        result = await gateway.complete(prompt, purpose=purpose, sampling=sampling, sample_index=sample_index)
    except TeacherUnavailable:
        raise
    except TeacherError:
        return None
    return result.text


def evol_items_from_records(rows: Sequence[dict[str, str]]) -> list[EvolItem]:
    """Items from Alpaca-style dicts (``instruction``/``input``/``output``), keyed by position if no key."""
    return [
        EvolItem(
            key=str(row.get("key") or row.get("id") or f"item:{n}"),
            instruction=str(row.get("instruction", "")),
            input=str(row.get("input", "")),
            output=str(row.get("output", "")),
        )
        for n, row in enumerate(rows)
        if str(row.get("instruction", "")).strip()
    ]
