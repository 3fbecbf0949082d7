"""Preference pairs from judgments: who outranks whom, and which pairs a ranking yields.

The rules (docs/preferences.md, "Preference pairs"):

* **People first.** A record's current judgments fall in three tiers: people here (the review page or the
  API), people according to an imported dataset (HH-RLHF), and machines (the LLM judge, and imported verdicts
  a model made or whose maker the dataset does not name). Only the first tier that judged the record at all
  counts: once a person judged it, even "tie" or "both bad", no judge can add or outvote a pair.
* **Majority within the tier.** For two candidates a and b, a beats b when more of the tier's judgments that
  compare them prefer a than prefer b or call them even (tie, both bad, same rank).
* **Best against each worse.** Pairs are (w, l) for every w that nothing beats and every l that w beats. A
  full ranking of n candidates gives n - 1 pairs, all with the best answer as `chosen`: DPO raises the
  likelihood of the chosen answer, and an answer people ranked second is not one to raise; and a prompt with
  many candidates does not outweigh the others quadratically. Ties and "both bad" give no pair.

The functions at the top are pure; the two at the bottom read the database.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from sqlalchemy.orm import Session

from app.preferences.models import JudgmentKind, JudgmentSource, PreferenceJudgment
from app.preferences.service import candidates_of, judgments_of

PERSON, IMPORTED_PEOPLE, MACHINE = 0, 1, 2
TIER_NAMES = {PERSON: "person", IMPORTED_PEOPLE: "imported_people", MACHINE: "machine"}


@dataclass(frozen=True)
class Verdict:
    """One current judgment, as pair derivation reads it."""

    tier: int
    voter: str
    # (better, worse) candidate ids, and every unordered pair it spoke about (ties and both-bad included).
    prefers: frozenset[tuple[int, int]]
    covers: frozenset[frozenset[int]]
    source: str = ""


@dataclass(frozen=True)
class Pair:
    chosen_id: int
    rejected_id: int
    tier: str
    sources: tuple[str, ...] = field(default_factory=tuple)


def tier_of(source: str, meta: Mapping[str, Any] | None) -> int:
    if source == JudgmentSource.person.value:
        return PERSON
    if source == JudgmentSource.imported.value and (meta or {}).get("by") == "human":
        return IMPORTED_PEOPLE
    return MACHINE


def verdict(
    *,
    kind: str,
    source: str,
    candidate_ids: Sequence[int],
    choice: str | None = None,
    ranking: Sequence[Sequence[int]] | None = None,
    meta: Mapping[str, Any] | None = None,
    voter: str = "",
) -> Verdict | None:
    """A pairwise choice (a, b, tie, both_bad) or a ranking (groups best first, a group a tie); None for
    what gives no order (aspect scores: advice shown beside, not a preference)."""
    prefers: set[tuple[int, int]] = set()
    covers: set[frozenset[int]] = set()
    if kind == JudgmentKind.pairwise.value and len(candidate_ids) == 2:
        a, b = int(candidate_ids[0]), int(candidate_ids[1])
        covers.add(frozenset((a, b)))
        if choice == "a":
            prefers.add((a, b))
        elif choice == "b":
            prefers.add((b, a))
    elif kind == JudgmentKind.ranking.value and ranking:
        groups = [[int(c) for c in group] for group in ranking]
        for i, better in enumerate(groups):
            for x, y in combinations(better, 2):
                covers.add(frozenset((x, y)))
            for worse in groups[i + 1 :]:
                for x in better:
                    for y in worse:
                        covers.add(frozenset((x, y)))
                        prefers.add((x, y))
    else:
        return None
    if not covers:
        return None
    return Verdict(tier_of(source, meta), voter, frozenset(prefers), frozenset(covers), source)


def derive(verdicts: Iterable[Verdict]) -> list[Pair]:
    """The pairs of one record's verdicts, oldest first (see the module docstring), in a stable order."""
    by_tier: dict[int, list[Verdict]] = defaultdict(list)
    for v in verdicts:
        by_tier[v.tier].append(v)
    if not by_tier:
        return []
    tier = min(by_tier)
    counted = by_tier[tier]
    wins: dict[tuple[int, int], int] = defaultdict(int)
    spoke: dict[frozenset[int], int] = defaultdict(int)
    # One vote per voter and pair: a voter's latest verdict on a pair (a ranking after a pairwise choice,
    # say) replaces what they said before. Verdicts come oldest first.
    seen: set[tuple[str, frozenset[int]]] = set()
    for v in reversed(counted):
        for pair in v.covers:
            if v.voter and (v.voter, pair) in seen:
                continue
            seen.add((v.voter, pair))
            spoke[pair] += 1
            x, y = sorted(pair)
            if (x, y) in v.prefers:
                wins[(x, y)] += 1
            elif (y, x) in v.prefers:
                wins[(y, x)] += 1
    beats: set[tuple[int, int]] = set()
    for pair, n in spoke.items():
        x, y = sorted(pair)
        if wins[(x, y)] * 2 > n:
            beats.add((x, y))
        elif wins[(y, x)] * 2 > n:
            beats.add((y, x))
    beaten = {loser for _, loser in beats}
    sources = tuple(sorted({v.source for v in counted}))
    return [Pair(w, loser, TIER_NAMES[tier], sources) for w, loser in sorted(beats) if w not in beaten]


# ------------------------------------------------------------------------------------------ database


def judgment_verdict(j: PreferenceJudgment) -> Verdict | None:
    # A person by their account; a machine by its model (its latest verdict on a pair is its vote).
    voter = (
        f"user:{j.user_id}"
        if j.source == JudgmentSource.person.value
        else f"{j.source}:{j.judge_model or ''}"
    )
    return verdict(
        kind=j.kind,
        source=j.source,
        candidate_ids=[int(c) for c in j.candidate_ids],
        choice=j.choice,
        ranking=j.ranking,
        meta=j.meta,
        voter=voter,
    )


def preferred_pairs(db: Session, record_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    """record id -> its pairs as they stand now: {chosen_id, rejected_id, chosen, rejected, by, sources}.
    A pair whose two texts are equal is left out (nothing to learn from it)."""
    judgments = judgments_of(db=db, record_ids=record_ids)
    cands = candidates_of(db=db, record_ids=[rid for rid in record_ids if judgments.get(rid)])
    out: dict[int, list[dict[str, Any]]] = {}
    for rid, js in judgments.items():
        text = {c.id: c.content for c in cands.get(rid, [])}
        verdicts = [v for v in map(judgment_verdict, js) if v is not None]
        rows = []
        for p in derive(verdicts):
            if p.chosen_id not in text or p.rejected_id not in text:
                continue
            if text[p.chosen_id] == text[p.rejected_id]:
                continue
            rows.append(
                {
                    "chosen_id": p.chosen_id,
                    "rejected_id": p.rejected_id,
                    "chosen": text[p.chosen_id],
                    "rejected": text[p.rejected_id],
                    "by": p.tier,
                    "sources": list(p.sources),
                }
            )
        if rows:
            out[rid] = rows
    return out
