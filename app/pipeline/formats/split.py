"""Seeded train/validation split."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def split(records: Sequence[T], *, val_fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """(train, validation): the same records, seed and fraction always give the same split.

    Both parts keep the input order. Training never ends up empty, and with val_fraction > 0 and
    at least two records validation gets at least one, so a tiny dataset still has something to
    validate on.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(records)
    n_val = int(n * val_fraction + 0.5)
    if val_fraction > 0 and n >= 2:
        n_val = max(n_val, 1)
    n_val = min(n_val, max(n - 1, 0))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    in_val = bytearray(n)
    for i in order[:n_val]:
        in_val[i] = 1
    train = [rec for rec, v in zip(records, in_val, strict=True) if not v]
    val = [rec for rec, v in zip(records, in_val, strict=True) if v]
    return train, val
