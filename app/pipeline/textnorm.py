"""Normalisation for exact-duplicate detection: the same text typed differently is the same text."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

# CJK punctuation that NFKC leaves alone, mapped to its ASCII counterpart.
_CJK_PUNCT = str.maketrans(
    {
        "。": ".",
        "、": ",",
        "「": '"',
        "」": '"',
        "『": '"',
        "』": '"',
        "【": "[",
        "】": "]",
        "《": "<",
        "》": ">",
        "〈": "<",
        "〉": ">",
        "“": '"',
        "”": '"',
        "‘": "'",
        "’": "'",
        "…": "...",
        "—": "-",
        "–": "-",
        "·": ".",
    }
)
_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """NFKC (full-width letters and punctuation become ASCII), CJK punctuation mapped, case-folded,
    whitespace collapsed and trimmed."""
    text = unicodedata.normalize("NFKC", text).translate(_CJK_PUNCT).casefold()
    return _SPACE.sub(" ", text).strip()


def exact_duplicates(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Map each duplicate's key to the key of the first item with the same normalised text."""
    first: dict[str, str] = {}
    dups: dict[str, str] = {}
    for key, text in items:
        norm = normalize(text)
        if norm in first:
            dups[key] = first[norm]
        else:
            first[norm] = key
    return dups
