"""Mix several datasets into one with per-source quotas or weights, then dedup across sources.

Selection is seeded. Deduplication then runs over the selected items in source order (the first
source listed wins a tie, so list the most trusted source first): exact duplicates on normalised text
(:func:`app.pipeline.textnorm.normalize`), then ROUGE-L near-duplicates with the greedy filter. Nothing
disappears silently: every item left out is in ``MixResult.dropped`` with its reason.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

from app.pipeline.rouge import NearDuplicateIndex
from app.pipeline.textnorm import normalize

__all__ = ["Dropped", "MixResult", "allocate", "mix"]

T = TypeVar("T")

Reason = Literal["not_selected", "exact_duplicate", "near_duplicate"]


@dataclass(frozen=True)
class Dropped:
    """An item left out of the mix: its origin, why, and what it duplicates (source, index, score)."""

    source: str
    index: int
    reason: Reason
    duplicate_of: tuple[str, int] | None = None
    score: float | None = None


@dataclass
class MixResult(Generic[T]):
    """The mixed items (shuffled with the seed), where each came from, and everything left out."""

    items: list[T]
    origins: list[tuple[str, int]]
    dropped: list[Dropped]
    requested: dict[str, int]
    selected: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)


def allocate(
    sizes: dict[str, int],
    *,
    quotas: dict[str, int] | None = None,
    weights: dict[str, float] | None = None,
    total: int | None = None,
) -> dict[str, int]:
    """How many items to take from each source.

    Quotas are taken as given (capped by what the source has). Weights split ``total`` in proportion
    (largest remainders get the rounding), and what a small source cannot supply is redistributed over
    the others by their weights. With neither, every item of every source is taken.
    """
    unknown = set(quotas or {}) | set(weights or {})
    if unknown - set(sizes):
        raise ValueError(f"unknown sources: {', '.join(sorted(unknown - set(sizes)))}")
    if quotas is not None and weights is not None:
        raise ValueError("give quotas or weights, not both")
    if quotas is not None:
        if any(q < 0 for q in quotas.values()):
            raise ValueError("quotas must be >= 0")
        return {name: min(size, quotas.get(name, 0)) for name, size in sizes.items()}
    if weights is None:
        return dict(sizes)
    if any(w < 0 for w in weights.values()) or not any(weights.values()):
        raise ValueError("weights must be >= 0 and not all 0")
    wanted = sum(sizes.values()) if total is None else total
    counts = dict.fromkeys(sizes, 0)
    open_sources = {name for name in sizes if weights.get(name, 0) > 0}
    remaining = min(wanted, sum(sizes[name] for name in open_sources))
    while remaining > 0 and open_sources:
        weight_sum = sum(weights[name] for name in open_sources)
        shares = {name: remaining * weights[name] / weight_sum for name in open_sources}
        grant = {name: math.floor(share) for name, share in shares.items()}
        leftover = remaining - sum(grant.values())
        for name in sorted(open_sources, key=lambda n: (grant[n] - shares[n], n))[:leftover]:
            grant[name] += 1
        for name in list(open_sources):
            room = sizes[name] - counts[name]
            take = min(room, grant[name])
            counts[name] += take
            remaining -= take
            if counts[name] >= sizes[name]:
                open_sources.discard(name)
    return counts


def mix(
    sources: Mapping[str, Sequence[T]],
    *,
    quotas: dict[str, int] | None = None,
    weights: dict[str, float] | None = None,
    total: int | None = None,
    seed: int,
    text: Callable[[T], str],
    threshold: float | None = 0.7,
) -> MixResult[T]:
    """Sample each source, then drop exact and near duplicates across (and within) sources.

    ``threshold=None`` skips the ROUGE-L step (exact duplicates are always removed). Counts per source:
    ``requested`` (the allocation), ``selected`` (sampled), ``kept`` (after dedup).
    """
    rnd = random.Random(seed)
    requested = allocate(
        {name: len(items) for name, items in sources.items()}, quotas=quotas, weights=weights, total=total
    )
    dropped: list[Dropped] = []
    chosen: list[tuple[str, int]] = []
    for name, items in sources.items():
        picked = set(rnd.sample(range(len(items)), requested[name]))
        chosen.extend((name, i) for i in sorted(picked))
        dropped.extend(Dropped(name, i, "not_selected") for i in range(len(items)) if i not in picked)

    first_seen: dict[str, tuple[str, int]] = {}
    index = NearDuplicateIndex(threshold=threshold) if threshold is not None else None
    survivors: list[tuple[str, int]] = []
    for origin in chosen:
        body = text(sources[origin[0]][origin[1]])
        norm = normalize(body)
        if norm in first_seen:
            dropped.append(Dropped(*origin, "exact_duplicate", duplicate_of=first_seen[norm], score=1.0))
            continue
        first_seen[norm] = origin
        if index is not None:
            decision = index.check_and_add(f"{origin[0]}\x00{origin[1]}", body)
            if not decision.kept:
                source, _, position = (decision.nearest or "").partition("\x00")
                dropped.append(
                    Dropped(
                        *origin, "near_duplicate", duplicate_of=(source, int(position)), score=decision.score
                    )
                )
                continue
        survivors.append(origin)

    rnd.shuffle(survivors)
    selected = {name: 0 for name in sources}
    for name, _ in chosen:
        selected[name] += 1
    kept = {name: 0 for name in sources}
    for name, _ in survivors:
        kept[name] += 1
    return MixResult(
        items=[sources[name][i] for name, i in survivors],
        origins=survivors,
        dropped=dropped,
        requested=requested,
        selected=selected,
        kept=kept,
    )
