"""Exact ROUGE-L with a CJK-aware tokenizer, and an incremental near-duplicate index.

The Self-Instruct / Alpaca recipe keeps a new instruction iff its ROUGE-L F-measure against every
instruction already in the pool is at most 0.7, calling ``rouge_score`` on every pair. This module gives
the same decisions without scoring every pair:

* :func:`tokenize` equals ``rouge_score``'s default tokenizer token for token on ASCII text, and also
  handles Chinese/Japanese/Korean (one token per ideograph, kana or hangul syllable) and other scripts
  (letters are kept, where ``rouge_score`` drops every character outside ``[a-z0-9]``).
* :func:`rouge_l_f` computes the F-measure with the very floating-point expression ``rouge_score`` uses, so
  scores are bit-identical and a pair sitting exactly on the threshold is decided the same way.
* :class:`NearDuplicateIndex` finds every pool record that could reach a score with an inverted index over
  a *prefix* of each record's tokens (rarest first) and a length window, both derived from the bound
  ``LCS <= multiset overlap <= min(m, n)``; only those candidates get an exact bit-parallel LCS
  (rapidfuzz). The pruning is exact: it only skips pairs whose score is provably below ``floor``.
* :func:`greedy_filter` runs the whole filter over texts known up front, a block of candidates at a time:
  either every pair against the records kept so far that the lengths allow (rapidfuzz's ``cdist``: the
  fastest way while the pool is small) or the index's prefix filter vectorised with numpy over the block (the fastest
  once it is not), and from tens of thousands of kept records one candidate at a time through the index.
  All find every pair that reaches the threshold, so the decisions are the same.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import multiprocessing
import multiprocessing.connection
import os
import re
import sys
import time
import unicodedata
from array import array
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from itertools import chain
from typing import Literal

import numpy as np
import numpy.typing as npt
from rapidfuzz import process
from rapidfuzz.distance import Indel, LCSseq

__all__ = [
    "DedupDecision",
    "NearDuplicateIndex",
    "greedy_filter",
    "nearest_neighbours",
    "rouge_l",
    "rouge_l_f",
    "tokenize",
]

_ASCII_TOKEN_RE = re.compile(r"[a-z0-9]+")

# Scripts written without spaces between words: every character is its own token, as in the Chinese
# ROUGE variants. Punctuation inside these blocks (e.g. the katakana middle dot) is left out.
_CJK_CLASS = (
    "\u1100-\u11ff"  # Hangul Jamo
    "\u2e80-\u2fdf"  # CJK and Kangxi radicals
    "\u3005\u3007\u3021-\u3029\u3038-\u303b"  # iteration mark, ideographic zero, Hangzhou numerals
    "\u3041-\u309f"  # Hiragana
    "\u30a1-\u30fa\u30fc-\u30ff"  # Katakana
    "\u3105-\u312f\u31a0-\u31bf"  # Bopomofo
    "\u3131-\u318e"  # Hangul compatibility jamo
    "\u31f0-\u31ff"  # Katakana phonetic extensions
    "\u3400-\u4dbf\u4e00-\u9fff"  # CJK unified ideographs (+ extension A)
    "\ua960-\ua97f\uac00-\ud7a3\ud7b0-\ud7ff"  # Hangul jamo extensions and syllables
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\uff66-\uff9f"  # half-width katakana
    "\U00020000-\U0003134f"  # CJK extensions B-G and compatibility supplement
)

# A pair is never pruned unless its bound is below the floor by more than this: float rounding in the
# bounds must not be able to hide a pair whose (rational) score reaches the floor.
_EPS = 1e-9

# Token ids are encoded as code points so rapidfuzz compares records as plain strings (its fastest path);
# the surrogate block is skipped because those code points are not characters.
_SURROGATE_START = 0xD800
_SURROGATE_SPAN = 0x800
_MAX_CODE_POINT = sys.maxunicode

# rapidfuzz 3.14's process.cdist and process.extract with LCSseq.similarity sometimes return 0 for a pair
# whose LCS equals score_cutoff exactly (~2.7 % of random pairs where the shorter string is a subsequence
# of the longer, measured; never with a cutoff one lower): every LCS cutoff passed to them is strictly
# below the least LCS that can qualify.
_LCS_CUTOFF_SLACK = 1
# Records are re-indexed with a fresh rarity order each time the pool doubles past this size.
_FIRST_REORDER = 1024
# Ranks assigned at a reorder start here, so tokens first seen later (rank = their id) sort as rarest.
_ORDERED_RANK_BASE = 1 << 40
# Prefixes are this many tokens longer than the bare minimum, so a qualifying pair shares at least this
# many prefix tokens: counting hits is far cheaper than scoring every record that shares one.
_PREFIX_SLACK = 5


@cache
def _token_pattern() -> re.Pattern[str]:
    """The non-ASCII tokenizer pattern; built on first use because listing the mark ranges takes ~50 ms."""
    marks: list[str] = []
    start = -1
    # Combining marks are letters' parts in Indic, Thai, Arabic...; without them words would be cut apart.
    # Outside the first two planes the only marks are the variation selectors, added by hand below.
    for cp in range(0x20000):
        if unicodedata.category(chr(cp)).startswith("M"):
            if start < 0:
                start = cp
            prev = cp
        elif start >= 0:
            marks.append(f"{chr(start)}-{chr(prev)}")
            start = -1
    marks.append("\U000e0100-\U000e01ef")
    mark_class = "".join(marks)
    return re.compile(f"[{_CJK_CLASS}]|(?:[^\\W_{_CJK_CLASS}]|[{mark_class}])+")


@cache
def _stemmer() -> Callable[[str], str]:
    from nltk.stem import porter  # imported lazily: nltk costs ~0.3 s and stemming is opt-in

    stem: Callable[[str], str] = porter.PorterStemmer().stem
    return stem


@cache
def _stem(token: str) -> str:
    return _stemmer()(token)


def tokenize(text: str, *, stem: bool = False) -> list[str]:
    """Split text into ROUGE tokens.

    ASCII text gives exactly ``rouge_score``'s default tokens (lower-case, runs of ``[a-z0-9]``). Other text
    is NFKC-normalised first; then each CJK ideograph, kana and hangul character is one token, and any other
    run of letters, digits and combining marks is one token. This is where we deliberately differ from
    ``rouge_score``, which drops every non-``[a-z0-9]`` character: ``"café"`` is ``["café"]`` here and
    ``["caf"]`` there, and a Chinese sentence is a list of characters here and nothing there.

    With ``stem=True``, ASCII tokens longer than 3 characters go through NLTK's Porter stemmer, as in
    ``rouge_score``; other tokens are left alone.
    """
    if text.isascii():
        tokens = _ASCII_TOKEN_RE.findall(text.lower())
    else:
        tokens = _token_pattern().findall(unicodedata.normalize("NFKC", text).lower())
    if stem:
        tokens = [_stem(t) if len(t) > 3 and t.isascii() else t for t in tokens]
    return tokens


def _f_measure(lcs: int, m: int, n: int) -> float:
    """F-measure written as ``rouge_score`` writes it, so results are bit-identical (and symmetric)."""
    if lcs == 0:
        return 0.0
    precision = lcs / n
    recall = lcs / m
    return 2 * precision * recall / (precision + recall)


def rouge_l_f(a: Sequence[str], b: Sequence[str]) -> float:
    """ROUGE-L F-measure of two token sequences; 0.0 when either is empty."""
    if not a or not b:
        return 0.0
    # Map tokens to small ints ourselves: rapidfuzz would otherwise compare 64-bit hashes of the strings.
    ids: dict[str, int] = {}
    ia = [ids.setdefault(t, len(ids)) for t in a]
    ib = [ids.setdefault(t, len(ids)) for t in b]
    return _f_measure(LCSseq.similarity(ia, ib), len(a), len(b))


def rouge_l(a_text: str, b_text: str, *, stem: bool = False) -> float:
    """ROUGE-L F-measure of two texts with :func:`tokenize`."""
    return rouge_l_f(tokenize(a_text, stem=stem), tokenize(b_text, stem=stem))


@dataclass(frozen=True)
class DedupDecision:
    """The outcome for one candidate: kept or not, its max score against the pool and that neighbour."""

    key: str
    kept: bool
    score: float
    nearest: str | None


_Encoded = str | list[int]


def _encode(ids: list[int]) -> _Encoded:
    """Token ids as a string of code points (or a list of ints when the vocabulary outgrows Unicode)."""
    codes = [i if i < _SURROGATE_START else i + _SURROGATE_SPAN for i in ids]
    if codes and max(codes) > _MAX_CODE_POINT:
        # rapidfuzz compares a one-character string and an int by code point, so mixing the two forms
        # across records stays exact.
        return codes
    return "".join(map(chr, codes))


def _decode(seq: _Encoded) -> list[int]:
    codes = [ord(c) for c in seq] if isinstance(seq, str) else seq
    return [c if c < _SURROGATE_START else c - _SURROGATE_SPAN for c in codes]


def _length_bounds() -> list[int]:
    """Lower ends of the length buckets: 0-3 exactly, then doubling (3, 6, 12, ...).

    Measured on real instructions: finer buckets make the per-bucket prefixes shorter but cost more
    dictionary probes than they save.
    """
    bounds = [0, 1, 2, 3]
    while bounds[-1] < 1 << 31:
        bounds.append(bounds[-1] * 2)
    return bounds


_BOUNDS = _length_bounds()
_N_BUCKETS = len(_BOUNDS)


def _bucket(n: int) -> int:
    return bisect_right(_BOUNDS, n) - 1


class NearDuplicateIndex:
    """A growing pool of texts that answers "what is the max ROUGE-L of this text against the pool?".

    Exactness: every pool record whose score with the query is ``>= floor`` is scored exactly, so the
    keep/reject decision (``max <= threshold``) and, for rejected texts, the nearest neighbour are always
    exact. For a kept text the reported max and neighbour are exact whenever the max is ``>= floor``
    (default: the threshold itself, the cheapest setting); below the floor they are the best among the
    records that happened to be scored, possibly ``(0.0, None)``. A lower floor costs speed.

    Ties between equally near neighbours go to the record added first.

    How candidates are found (all bounds are upper bounds on the LCS, so no qualifying pair is lost):
    tokens are ordered rarest first; each record is indexed under the tokens of a *prefix* of that order,
    bucketed by the record's length. A pair can score ``>= floor`` only if its multiset overlap is at least
    ``alpha = floor * (m + n) / 2``; with prefixes ``alpha - k`` tokens short of the full records, such a
    pair shares at least ``k`` prefix tokens (the prefix-filter principle), so only records hit ``k``
    times in the length window get an exact LCS.
    """

    def __init__(self, *, threshold: float = 0.7, stem: bool = False, floor: float | None = None) -> None:
        floor = threshold if floor is None else floor
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        if not 0.0 < floor <= 1.0:
            raise ValueError(f"floor must be in (0, 1], got {floor}")
        self.threshold = threshold
        self.stem = stem
        self.floor = min(floor, threshold)
        # A record of n tokens can score >= floor only with a partner sharing at least
        # floor * n / (2 - floor) tokens (LCS <= overlap <= the partner's length).
        self._overlap_frac = self.floor / (2.0 - self.floor)
        self._token_ids: dict[str, int] = {}
        self._rank: list[int] = []  # token id -> position in the rarest-first order
        self._df: list[int] = []  # token id -> how many records contain it
        self._keys: list[str] = []
        self._seqs: list[_Encoded] = []
        self._lens: list[int] = []
        self._postings: dict[int, array[int]] = {}
        self._order_frozen = False
        self._next_reorder = _FIRST_REORDER

    def __len__(self) -> int:
        return len(self._keys)

    # -- public API -------------------------------------------------------------------------------------

    def add(self, key: str, text: str) -> None:
        """Add a text unconditionally (seed tasks, an existing pool)."""
        self._insert(key, self._ids(tokenize(text, stem=self.stem)))

    def nearest(self, text: str) -> tuple[float, str | None]:
        """Max ROUGE-L of ``text`` against the pool and the key reaching it (exact when >= ``floor``)."""
        ids = self._ids(tokenize(text, stem=self.stem), create=False)
        score, rid = self._best(ids)
        return score, (self._keys[rid] if rid is not None else None)

    def check_and_add(self, key: str, text: str) -> DedupDecision:
        """Decide ``text`` against the pool (keep iff max score <= threshold) and add it when kept."""
        return self._check_and_add_ids(key, self._ids(tokenize(text, stem=self.stem)))

    # -- internals --------------------------------------------------------------------------------------

    def _ids(self, tokens: list[str], *, create: bool = True) -> list[int]:
        """Token ids; with ``create=False`` unseen tokens become -1 (they match nothing in the pool)."""
        table = self._token_ids
        out: list[int] = []
        for tok in tokens:
            tid = table.get(tok)
            if tid is None:
                if not create:
                    out.append(-1)
                    continue
                tid = len(table)
                table[tok] = tid
                self._rank.append(tid)
                self._df.append(0)
            out.append(tid)
        return out

    def _check_and_add_ids(self, key: str, ids: list[int]) -> DedupDecision:
        score, rid = self._best(ids)
        kept = score <= self.threshold
        if kept:
            self._insert(key, ids)
        return DedupDecision(
            key=key, kept=kept, score=score, nearest=self._keys[rid] if rid is not None else None
        )

    def _alpha(self, m: int, n: int) -> int:
        """Least multiset overlap that lets a pair of lengths m and n score >= floor."""
        return max(1, math.ceil(self.floor * (m + n) / 2.0 - _EPS))

    def _sorted(self, ids: list[int]) -> list[int]:
        rank = self._rank
        # Unseen query tokens (-1) sort first: the rarest of all, they match nothing.
        return sorted(ids, key=lambda i: rank[i] if i >= 0 else -1)

    def _index_record(self, postings: dict[int, array[int]], rid: int, ids: list[int]) -> None:
        n = len(ids)
        if n == 0:
            return
        # The shortest partner (m = alpha) gives the smallest alpha for this record: its prefix must cover it.
        alpha = max(1, math.ceil(n * self._overlap_frac - _EPS))
        keep = min(n, n - alpha + _PREFIX_SLACK)
        base = _bucket(n)
        for tid in self._sorted(ids)[:keep]:
            key = tid * _N_BUCKETS + base
            bucket = postings.get(key)
            if bucket is None:
                postings[key] = array("i", (rid,))
            else:
                bucket.append(rid)

    def _insert(self, key: str, ids: list[int]) -> None:
        rid = len(self._keys)
        self._keys.append(key)
        self._seqs.append(_encode(ids))
        self._lens.append(len(ids))
        df = self._df
        for tid in set(ids):
            df[tid] += 1
        self._index_record(self._postings, rid, ids)
        if not self._order_frozen and len(self._keys) >= self._next_reorder:
            self._next_reorder *= 2
            self._reorder()

    def _reorder(self) -> None:
        """Rank tokens rarest first by current document frequency and rebuild the postings.

        Any fixed order keeps the prefix filter exact; rare-first keeps the postings it probes short.
        Tokens first seen after this (rank = their id, below the base) count as rarest until the next one.
        """
        order = sorted(range(len(self._df)), key=self._df.__getitem__)
        rank = self._rank
        for pos, tid in enumerate(order):
            rank[tid] = _ORDERED_RANK_BASE + pos
        postings: dict[int, array[int]] = {}
        for rid, seq in enumerate(self._seqs):
            self._index_record(postings, rid, _decode(seq))
        self._postings = postings

    def _freeze_order(self, token_lists: Iterable[list[str]]) -> list[list[int]]:
        """Fix the token order from all texts known up front (a batch run) and return their ids."""
        id_lists = [self._ids(tokens) for tokens in token_lists]
        counts = list(self._df)
        for ids in id_lists:
            for tid in set(ids):
                counts[tid] += 1
        saved, self._df = self._df, counts
        self._reorder()
        self._df = saved
        self._order_frozen = True
        return id_lists

    def _candidates(self, ids: list[int], lo: int, hi: int) -> list[int]:
        """Records of length lo..hi hit at least ``_PREFIX_SLACK`` times by the query's prefix tokens."""
        m = len(ids)
        # Keys of the query's distinct known tokens, rarest first, and how many of them lie within the
        # first j elements: a prefix of j elements probes keys[:within[j]].
        keys: list[int] = []
        within = [0]
        previous = -2
        for tid in self._sorted(ids):
            if tid != previous and tid >= 0:
                keys.append(tid * _N_BUCKETS)
            within.append(len(keys))
            previous = tid
        get = self._postings.get
        lists: list[array[int]] = []
        floor = self.floor
        for b in range(_bucket(lo), _bucket(hi) + 1):
            # The bucket's shortest length gives the least required overlap, hence the longest prefix.
            alpha = max(1, math.ceil(floor * (m + max(lo, _BOUNDS[b])) / 2.0 - _EPS))
            keep = min(m, m - alpha + _PREFIX_SLACK)
            lists.extend(filter(None, map(get, [k + b for k in keys[: within[keep]]])))
        if not lists:
            return []
        # Sorted, a record hit k times is a run of k equal ids: compare each id with the one k-1 later.
        # (One bytes join of the postings' buffers: np.concatenate converts each array on its own, which
        # cost more than the rest of this method on a large pool.)
        hits = np.sort(np.frombuffer(b"".join(lists), dtype=np.int32))
        # Prefixes cut at the full record leave fewer than _PREFIX_SLACK spare tokens: a pair then only
        # needs as many hits as its required overlap, at least alpha(m, lo).
        need = min(_PREFIX_SLACK, max(1, math.ceil(floor * (m + lo) / 2.0 - _EPS)))
        if len(hits) < need:
            return []
        if need > 1:
            hits = hits[need - 1 :][hits[need - 1 :] == hits[: len(hits) - need + 1]]
        if hits.size == 0:
            return []
        first = np.empty(hits.size, dtype=bool)
        first[0] = True
        np.not_equal(hits[1:], hits[:-1], out=first[1:])
        distinct: list[int] = hits[first].tolist()
        return distinct

    def _scored_candidates(self, ids: list[int]) -> Iterator[tuple[float, int]]:
        """(score, record id) for every record that could score >= floor (and some that don't)."""
        m = len(ids)
        if m == 0:
            return
        # Length window: LCS <= min(m, n), so the shorter side must hold floor * (m + n) / 2 tokens.
        lo = max(1, math.ceil(m * self._overlap_frac - _EPS))
        hi = math.floor(m / self._overlap_frac + _EPS)
        candidates = self._candidates(ids, lo, hi)
        if not candidates:
            return
        unseen = len(self._rank)
        query = _encode([i if i >= 0 else unseen for i in ids])
        lens = self._lens
        seqs = self._seqs
        # No pair in the window can reach the floor with fewer common tokens than this; rapidfuzz gets one
        # less, since its cdist/extract (3.14) can drop a pair whose LCS equals the cutoff exactly (a record
        # contained in a longer one at the window's edge: _LCS_CUTOFF_SLACK).
        cutoff = max(0, math.ceil(self.floor * (m + lo) / 2.0 - _EPS) - _LCS_CUTOFF_SLACK)
        # One call scores all candidates in C (several times faster than a Python loop).
        for _, lcs, i in process.extract(
            query,
            [seqs[rid] for rid in candidates],
            scorer=LCSseq.similarity,
            processor=None,
            score_cutoff=cutoff,
            limit=None,
        ):
            rid = candidates[i]
            n = lens[rid]
            if lo <= n <= hi:
                yield _f_measure(int(lcs), m, n), rid

    def _best(self, ids: list[int]) -> tuple[float, int | None]:
        best = 0.0
        best_rid: int | None = None
        for score, rid in self._scored_candidates(ids):
            if score > best or (score == best and best_rid is not None and rid < best_rid):
                best, best_rid = score, rid
        return best, best_rid


Strategy = Literal["auto", "index", "blocks", "query"]

# Candidates decided per cdist ("blocks") pass: each is one call against the records kept before it and
# one within itself, so larger blocks pay less call overhead but score more in-block pairs.
_BLOCK = 64
# Candidates probed per numpy pass of the prefix filter ("index"): larger blocks pay less per-call
# overhead, but probe postings of more in-block records that end up rejected.
_PREFIX_BLOCK = 512
# rapidfuzz's cutoff is applied to its own float 2·LCS/(m+n); passing it this far below the threshold
# means no pair that reaches the threshold in exact arithmetic can be cut, whatever the rounding.
_CUTOFF_MARGIN = 1e-6
# "auto" times both methods on this many candidates: the losing method's pass is the price of a trial.
_PREFIX_TRIAL = 128
# "auto" uses cdist alone until this many records are kept: below it, cdist wins on any data we measured.
_MIN_TIMED_POOL = 1024
# ... and only with at least this many candidates left to decide.
_MIN_TRIAL_REMAINING = 1024
# Query lengths at which rapidfuzz's cdist packs queries into SIMD vectors of another width (longer queries
# are scored one by one): cdist is called once per width, so splitting by length costs no packing.
_SIMD_WIDTHS = np.array([16, 32, 64, 128, 256], dtype=np.int64)
# The prefix filter's postings first cover this many records (more if a block passes them).
_PREFIX_HORIZON = 1 << 17
# "auto" decides one candidate at a time with NearDuplicateIndex once this many records are kept.
_QUERY_POOL = 40_000
# One query at a time uses a second core (a forked worker with a replica of the index) only with at least
# this many candidates left: the fork and the replica's page faults cost more than a few blocks save.
_PARALLEL_MIN = 8192
# Candidates whose pool-side matches are looked up in parallel (against the index as of the block's start)
# before the block is resolved in order; the in-block pairs are scored while resolving.
_QUERY_BLOCK = 256

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]
_Near = dict[int, list[tuple[int, float]]]


def greedy_filter(
    pool: Iterable[tuple[str, str]],
    candidates: Iterable[tuple[str, str]],
    *,
    threshold: float = 0.7,
    stem: bool = False,
    strategy: Strategy = "auto",
) -> list[DedupDecision]:
    """Self-Instruct's filter: keep each candidate, in order, iff its max ROUGE-L against the pool and the
    candidates kept before it is <= threshold. Returns one decision per candidate, in order.

    Every strategy gives the same decisions, bit for bit: the keep/reject flag, and the exact max score
    and nearest key (ties: the earliest) whenever that max reaches ``threshold``; a candidate whose max is
    below it gets ``(0.0, None)``, since only pairs that can reach the threshold are looked at.
    ``"blocks"`` scores every pair whose lengths allow the threshold (rapidfuzz's ``cdist``, 64
    candidates at a time, against the kept records in their length window); ``"index"`` only the pairs
    that :class:`NearDuplicateIndex`'s prefix filter cannot rule out (the same filter, vectorised over
    512 candidates at a time); ``"query"`` asks a :class:`NearDuplicateIndex` of the kept records one
    candidate at a time. ``"auto"`` starts with blocks, moves to the vectorised filter once a timed
    trial says it is cheaper (from 1,024 kept records on), and to one query at a time from 40,000 kept
    records (where that was measured to be cheaper per candidate: docs/benchmarks.md). With 8,192 or
    more candidates left for one query at a time, two cores, the fork start method and a non-daemonic
    process, it forks one worker process that looks up half of each block's pool matches (ended before
    this returns, whatever happens); otherwise it runs in this process alone.
    """
    if strategy not in ("auto", "index", "blocks", "query"):
        raise ValueError(f"unknown strategy {strategy!r}")
    pool = list(pool)
    candidates = list(candidates)
    token_lists = [tokenize(text, stem=stem) for _, text in chain(pool, candidates)]
    keys = [key for key, _ in chain(pool, candidates)]
    return _Greedy(keys, token_lists, len(pool), threshold).run(strategy)


def _ranges(starts: Ints, counts: Ints) -> Ints:
    """``concatenate([arange(s, s + c) for s, c in zip(starts, counts)])`` without the Python loop."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(counts)
    out: Ints = np.repeat(starts - (ends - counts), counts) + np.arange(total, dtype=np.int64)
    return out


def _frequency_encoded(token_lists: list[list[str]]) -> list[_Encoded]:
    """Records as code-point strings, the most frequent tokens first: rapidfuzz looks code points below
    256 up in a plain array and others in a hash map, so common words get the cheap path."""
    counts = Counter(chain.from_iterable(token_lists))
    ids = {token: i for i, (token, _) in enumerate(counts.most_common())}
    if len(ids) + _SURROGATE_SPAN > _MAX_CODE_POINT:
        return [_encode([ids[t] for t in tokens]) for tokens in token_lists]
    # Every id has a code point: each token's character once, then each record is one join.
    char = {token: chr(i if i < _SURROGATE_START else i + _SURROGATE_SPAN) for token, i in ids.items()}
    return ["".join([char[t] for t in tokens]) for tokens in token_lists]


def _exact_scores(norm_sim: Floats, m: Floats, n: Floats) -> Floats:
    """ROUGE-L F (rouge_score's expression) from rapidfuzz's normalized Indel similarity 1 - d/(m+n).

    The Indel distance is d = m + n - 2·LCS, an integer well inside float precision, so rounding recovers
    it exactly; numpy's float64 operations are IEEE's, so the F-measure is bit-identical to ``_f_measure``.
    """
    lensum = m + n
    lcs = (lensum - np.rint((1.0 - norm_sim) * lensum)) / 2.0
    precision = lcs / n
    recall = lcs / m
    out: Floats = 2 * precision * recall / (precision + recall)
    return out


class _Greedy:
    """The batch greedy filter. Each block of candidates finds its pairs that can reach the threshold,
    either by scoring every pair against the records kept so far (``_pairs_by_cdist``) or through the
    prefix filter (``_pairs_by_prefix``); both return every pair whose score reaches the threshold, so
    ``_decide`` resolves the block in order the same way whichever found them.
    """

    def __init__(self, keys: list[str], token_lists: list[list[str]], n_pool: int, threshold: float) -> None:
        self.keys = keys
        self.token_lists = token_lists
        self.n_pool = n_pool
        self.threshold = threshold
        self.cutoff = threshold - _CUTOFF_MARGIN
        self.n = len(token_lists)
        self.lens = np.array([len(t) for t in token_lists], dtype=np.int64)
        self.lens_f = self.lens.astype(np.float64)
        self.seqs = _frequency_encoded(token_lists)
        self.kept = np.zeros(self.n, dtype=bool)
        self.kept[:n_pool] = self.lens[:n_pool] > 0
        # The kept records with at least one token, for cdist (an empty record scores 0 with everything).
        self.kept_ids: list[int] = [i for i in range(n_pool) if self.lens[i] > 0]
        # The same records sorted by length (ties in record order), for cdist against a length window.
        self.sorted_ids: Ints = np.zeros(0, dtype=np.int64)
        self.sorted_lens: Ints = np.zeros(0, dtype=np.int64)
        self.sorted_seqs: list[_Encoded] = []
        self._insert_sorted(self.kept_ids)
        self.cdist_pool = True  # kept up to date while cdist may still be used
        # A pair of lengths m <= n can reach the cutoff only if m >= frac * n (LCS <= m).
        self.frac = max(self.cutoff, 0.0) / (2.0 - self.cutoff)
        self.out: list[DedupDecision] = []
        self._prefix_ready = False
        self.horizon = 0  # records the prefix filter's postings cover

    def run(self, strategy: Strategy) -> list[DedupDecision]:
        # "auto" starts with cdist, whose cost per candidate grows with the pool, and each time the pool
        # doubles from _MIN_TIMED_POOL on, times both methods on the same candidates; the prefix filter
        # takes over for good once it wins. CPU time, not wall time: a shared machine's load would
        # otherwise decide (cdist runs on one thread; the filter's cpdist on all cores, its CPU summed).
        # From _QUERY_POOL kept records on, one candidate at a time through NearDuplicateIndex (its
        # postings hold kept records only; the vectorised filter's hits on records later rejected and
        # its pair arrays grow with the pool): 2-4x cheaper per candidate from ~70,000 kept records on
        # the million stream of bench/dedup.py, about even at ~22,000-36,000 (docs/benchmarks.md).
        trial_at = _MIN_TIMED_POOL if strategy == "auto" else None
        use_prefix = strategy == "index"
        self.cdist_pool = not use_prefix
        start = self.n_pool
        while start < self.n:
            if strategy == "query" or (strategy == "auto" and len(self.kept_ids) >= _QUERY_POOL):
                self._run_queries(start)
                break
            # A trial costs the prefix filter's set-up and one pass: worth it only with work left.
            left = self.n - start
            if (
                trial_at
                and not use_prefix
                and len(self.kept_ids) >= trial_at
                and left >= _MIN_TRIAL_REMAINING
            ):
                trial_at *= 2
                end = min(start + _PREFIX_TRIAL, self.n)
                if not self._prefix_ready:
                    self._prepare_prefix(end)  # once, not part of the cost per candidate
                clock = time.process_time()
                self._pairs_by_prefix(start, end)  # timed only: the cdist pass below decides
                prefix_s = time.process_time() - clock
                cdist_s = 0.0
                for sub in range(start, end, _BLOCK):
                    clock = time.process_time()
                    found = self._pairs_by_cdist(sub, min(sub + _BLOCK, end))
                    cdist_s += time.process_time() - clock
                    self._decide(sub, min(sub + _BLOCK, end), *found)
                use_prefix = prefix_s < cdist_s
                self.cdist_pool = not use_prefix
                start = end
                continue
            end = min(start + (_PREFIX_BLOCK if use_prefix else _BLOCK), self.n)
            found = self._pairs_by_prefix(start, end) if use_prefix else self._pairs_by_cdist(start, end)
            self._decide(start, end, *found)
            start = end
        return self.out

    def _run_queries(self, start: int) -> None:
        """Decide every candidate from ``start`` on one at a time with :class:`NearDuplicateIndex` (its
        token order frozen from all texts, its postings holding only kept records): the fastest way once
        the pool is large, where the vectorised filter's hits on records later rejected dominate."""
        # The vectorised filter's arrays are not needed any more.
        for name in ("postings", "stok", "first", "starts", "lo", "hi", "bucket_lo", "bucket_hi", "need"):
            self.__dict__.pop(name, None)
        self._prefix_ready = False
        index = NearDuplicateIndex(threshold=self.threshold)
        id_lists = index._freeze_order(self.token_lists)
        keys, threshold = self.keys, self.threshold
        # Records kept so far, in order: ties in the index go to the record added first, as here.
        for i in self.kept_ids:
            index._insert(keys[i], id_lists[i])
        out = self.out
        if _can_fork_worker() and self.n - start >= _PARALLEL_MIN:
            start = self._query_in_parallel(start, index, id_lists)
        for i in range(start, self.n):
            ids = id_lists[i]
            score, rid = index._best(ids)
            keep = score <= threshold
            if keep and ids:
                index._insert(keys[i], ids)
                self.kept[i] = True
                self.kept_ids.append(i)
            reached = score >= threshold
            out.append(
                DedupDecision(
                    key=keys[i],
                    kept=keep,
                    score=score if reached else 0.0,
                    nearest=index._keys[rid] if reached and rid is not None else None,
                )
            )

    def _query_in_parallel(self, start: int, index: NearDuplicateIndex, id_lists: list[list[int]]) -> int:
        """Decide candidates from ``start`` on a block at a time with a forked worker, returning where the
        sequential path must go on (``self.n`` when done; ``start`` when no worker could be started).

        Each block's pool-side best matches (against ``index`` as of the block's start) are looked up half
        here and half in the worker, whose replica of the index (copy-on-write from the fork) gets the
        block's kept records after each block, in the same order, so both stay identical. The block is then
        resolved in order here: the pool's best, then the block's earlier kept records, scored exactly. Pool
        records precede the block's, so an in-block partner wins only with a strictly greater score, and
        among the block's the earliest: ties go to the earliest record, as in ``index._best``."""
        try:
            ctx = multiprocessing.get_context("fork")
            parent, child = ctx.Pipe()
        except (ValueError, OSError):
            return start
        worker = ctx.Process(target=_query_worker, args=(child, parent, index, id_lists), daemon=True)
        try:
            worker.start()
        except (AssertionError, OSError):  # e.g. a daemonic process may not have children
            parent.close()
            child.close()
            return start
        child.close()
        try:
            added: list[int] = []
            block = _QUERY_BLOCK
            split = block // 2  # how many of a block's queries are made here; the rest by the worker
            s = start
            while s < self.n:
                e = min(s + block, self.n)
                mid = s + min(split, e - s)
                try:
                    parent.send((added, mid, e))
                except OSError:  # the worker is gone: the sequential path takes over from this block
                    return s
                mine = [index._best(id_lists[i]) for i in range(s, mid)]
                # Balance the two halves: a worker already done could have taken more, and vice versa.
                step = max(1, block // 64)
                split = max(step, split - step) if parent.poll() else min(block - step, split + step)
                try:
                    theirs: list[tuple[float, int | None]] = parent.recv()
                except (EOFError, OSError):
                    return s
                added = self._resolve_block(s, e, mine + theirs, index, id_lists)
                s = e
            with contextlib.suppress(OSError):  # a worker already gone needs no goodbye
                parent.send(None)
        finally:
            parent.close()
            worker.join(timeout=5)
            if worker.is_alive():
                worker.terminate()
                worker.join()
        return self.n

    def _resolve_block(
        self,
        start: int,
        end: int,
        pool_best: list[tuple[float, int | None]],
        index: NearDuplicateIndex,
        id_lists: list[list[int]],
    ) -> list[int]:
        """Decide ``start..end`` in order from each one's best against the index as of ``start`` and its
        exact scores against the block's earlier kept records; add the kept ones to ``index`` and return
        them. Scores are ``_f_measure`` of the exact LCS, as ``index._best`` computes them."""
        keys, threshold, seqs, lens = self.keys, self.threshold, self.seqs, self.lens
        overlap_frac = index._overlap_frac
        floor = index.floor
        block_seqs: list[_Encoded] = []  # the block's kept records so far
        block_ids: list[int] = []
        block_lens: list[int] = []
        added: list[int] = []
        out = self.out
        for i, (score, rid) in zip(range(start, end), pool_best, strict=True):
            nearest = index._keys[rid] if rid is not None else None
            m = int(lens[i])
            if m and block_seqs:
                lo = max(1, math.ceil(m * overlap_frac - _EPS))
                # Below this LCS no partner in the length window reaches the floor (one less: see
                # _LCS_CUTOFF_SLACK); partners outside the window are scored exactly and fall short.
                cutoff = max(0, math.ceil(floor * (m + lo) / 2.0 - _EPS) - _LCS_CUTOFF_SLACK)
                found = process.extract(
                    seqs[i],
                    block_seqs,
                    scorer=LCSseq.similarity,
                    processor=None,
                    score_cutoff=cutoff,
                    limit=None,
                )
                # In record order: strictly greater wins, so ties keep the earliest (pool records first).
                for _, lcs, k in sorted(found, key=lambda hit: hit[2]):
                    block_score = _f_measure(int(lcs), m, block_lens[k])
                    if block_score > score:
                        score, nearest = block_score, keys[block_ids[k]]
            keep = score <= threshold
            if keep and m:
                index._insert(keys[i], id_lists[i])
                self.kept[i] = True
                self.kept_ids.append(i)
                added.append(i)
                block_seqs.append(seqs[i])
                block_ids.append(i)
                block_lens.append(m)
            reached = score >= threshold
            out.append(
                DedupDecision(
                    key=keys[i],
                    kept=keep,
                    score=score if reached else 0.0,
                    nearest=nearest if reached else None,
                )
            )
        return added

    def _decide(self, start: int, end: int, near_pool: _Near, near_block: _Near) -> None:
        """Resolve a block in order; ties between equally near records go to the earliest."""
        kept = self.kept
        added: list[int] = []
        for i in range(start, end):
            best, nearest = 0.0, -1
            for j, score in near_pool.get(i, ()):
                if score > best or (score == best and j < nearest):
                    best, nearest = score, j
            for j, score in near_block.get(i, ()):
                if kept[j] and (score > best or (score == best and j < nearest)):
                    best, nearest = score, j
            keep = best <= self.threshold
            if keep and self.lens[i] > 0:
                kept[i] = True
                self.kept_ids.append(i)
                added.append(i)
            reached = best >= self.threshold
            self.out.append(
                DedupDecision(
                    key=self.keys[i],
                    kept=keep,
                    score=best if reached else 0.0,
                    nearest=self.keys[nearest] if reached else None,
                )
            )
        if self.cdist_pool:
            self._insert_sorted(added)

    def _insert_sorted(self, added: list[int]) -> None:
        """Add kept records (in record order) to the length-sorted pool, after those of the same length."""
        if not added:
            return
        new = np.array(added, dtype=np.int64)
        new_lens = self.lens[new]
        order = np.argsort(new_lens, kind="stable")
        new, new_lens = new[order], new_lens[order]
        at = np.searchsorted(self.sorted_lens, new_lens, side="right")
        self.sorted_lens = np.insert(self.sorted_lens, at, new_lens)
        self.sorted_ids = np.insert(self.sorted_ids, at, new)
        # Last first, so the positions of the others still hold; equal positions keep their order.
        seqs = self.sorted_seqs
        for pos, i in zip(reversed(at.tolist()), reversed(new.tolist()), strict=True):
            seqs.insert(pos, self.seqs[i])

    def _collect(self, start: int, q: Ints, r: Ints, sims: Floats) -> tuple[_Near, _Near]:
        """Pairs (query q, earlier record r) whose rapidfuzz score passed the cutoff, with exact scores."""
        close = np.flatnonzero(sims)
        q, r = q[close], r[close]
        scores = _exact_scores(sims[close], self.lens_f[q], self.lens_f[r])
        near_pool: _Near = {}
        near_block: _Near = {}
        for a, b, score in zip(q.tolist(), r.tolist(), scores.tolist(), strict=True):
            (near_block if b >= start else near_pool).setdefault(a, []).append((b, score))
        return near_pool, near_block

    def _collect_lcs(self, start: int, q: Ints, r: Ints, lcs: npt.NDArray[np.int32]) -> tuple[_Near, _Near]:
        """Pairs (query q, earlier record r) with their LCS length: exact scores, and those that reach the
        cutoff (rouge_score's expression in IEEE float64, so bit-identical to ``_f_measure``)."""
        m, n = self.lens_f[q], self.lens_f[r]
        common = lcs.astype(np.float64)
        precision = common / n
        recall = common / m
        scores = 2 * precision * recall / (precision + recall)
        close = np.flatnonzero(scores >= self.cutoff)
        near_pool: _Near = {}
        near_block: _Near = {}
        for a, b, score in zip(q[close].tolist(), r[close].tolist(), scores[close].tolist(), strict=True):
            (near_block if b >= start else near_pool).setdefault(a, []).append((b, score))
        return near_pool, near_block

    def _pairs_by_cdist(self, start: int, end: int) -> tuple[_Near, _Near]:
        """Every pair of the block with the records kept before it that the lengths allow, then within the
        block: LCS lengths by rapidfuzz's ``cdist`` (the same bit-parallel kernel brute force uses).

        The block's queries are split where rapidfuzz's SIMD packing changes width (up to 16, 32, 64
        tokens; longer ones are not packed), and each group is scored only against the kept records whose
        length it can reach the threshold with (the pool is kept sorted by length), with a cutoff on the
        LCS below which no pair of those lengths can; most pairs come back as 0. One thread: these calls
        are too small for rapidfuzz's threads to pay for themselves (measured: slower on 2 cores)."""
        block_lens = self.lens[start:end]
        if not block_lens.any():
            return {}, {}
        order = np.argsort(block_lens, kind="stable")
        q_lens = block_lens[order]
        first = int(np.searchsorted(q_lens, 0, side="right"))  # empty queries score 0 with everything
        # Group boundaries: where the SIMD width changes (empty queries left out).
        cuts = np.flatnonzero(np.diff(np.searchsorted(_SIMD_WIDTHS, q_lens, side="left"))) + 1
        edges = [first, *(int(c) for c in cuts if c > first), len(order)]
        sorted_lens = self.sorted_lens

        def least_lcs(length_sum: int) -> int:
            # Below the least LCS a pair of lengths summing to at least this can reach the threshold with
            # (the cutoff is below the threshold, the floor below that, and one less: _LCS_CUTOFF_SLACK).
            return math.floor(self.cutoff * length_sum / 2.0) - _LCS_CUTOFF_SLACK

        found_q: list[Ints] = []
        found_r: list[Ints] = []
        found_lcs: list[npt.NDArray[np.int32]] = []
        for g0, g1 in itertools.pairwise(edges):
            shortest, longest = int(q_lens[g0]), int(q_lens[g1 - 1])
            lo = int(np.searchsorted(sorted_lens, math.ceil(shortest * self.frac - _EPS)))
            hi = len(sorted_lens)
            if self.frac > 0:
                hi = int(np.searchsorted(sorted_lens, math.floor(longest / self.frac + _EPS), side="right"))
            if hi <= lo:
                continue
            queries = start + order[g0:g1]
            lcs = process.cdist(
                [self.seqs[i] for i in queries.tolist()],
                self.sorted_seqs[lo:hi],
                scorer=LCSseq.similarity,
                score_cutoff=max(0, least_lcs(shortest + int(sorted_lens[lo]))),
                dtype=np.int32,
                workers=1,
            )
            flat = np.flatnonzero(lcs)
            rows, cols = np.divmod(flat, hi - lo)
            found_q.append(queries[rows])
            found_r.append(self.sorted_ids[lo + cols])
            found_lcs.append(lcs.ravel()[flat])
        near_pool: _Near = {}
        if found_q:
            near_pool, _ = self._collect_lcs(
                start, np.concatenate(found_q), np.concatenate(found_r), np.concatenate(found_lcs)
            )
        queries_all = self.seqs[start:end]
        inner = process.cdist(
            queries_all,
            queries_all,
            scorer=LCSseq.similarity,
            score_cutoff=max(0, least_lcs(2 * int(q_lens[first]))),
            dtype=np.int32,
            workers=1,
        )
        # Below the diagonal: earlier records only.
        later, earlier = np.nonzero(np.tril(inner, -1))
        block = np.arange(start, end, dtype=np.int64)
        _, near_block = self._collect_lcs(start, block[later], block[earlier], inner[later, earlier])
        return near_pool, near_block

    def _prepare_prefix(self, end: int) -> None:
        """Postings of the records up to a horizon past ``end`` (all are known up front), built the first
        time they are used and again, twice as far, if a block passes the horizon. "auto" hands over to
        one query at a time long before _PREFIX_HORIZON records on any data measured, so it builds them
        once, and not for a million records it would never probe."""
        self._prefix_ready = True
        n = min(self.n, max(end, 2 * self.horizon, _PREFIX_HORIZON))
        self.horizon = n
        floor, lens = self.threshold, self.lens[:n]
        frac = floor / (2.0 - floor)
        table: dict[str, int] = {}
        flat = [table.setdefault(t, len(table)) for tokens in self.token_lists[:n] for t in tokens]
        vocab = max(1, len(table))
        tok = np.array(flat, dtype=np.int64)
        self.starts = np.cumsum(lens) - lens
        rec = np.repeat(np.arange(n, dtype=np.int64), lens)
        # Rarest first by document frequency, ties by first appearance.
        occurrences = np.sort(rec * vocab + tok)
        df = np.bincount(occurrences[np.diff(occurrences, prepend=-1) != 0] % vocab, minlength=vocab)
        rank = np.empty(vocab, dtype=np.int64)
        rank[np.lexsort((np.arange(vocab), df))] = np.arange(vocab)
        self.stok = tok[np.lexsort((rank[tok], rec))]  # each record's tokens, rarest first
        pos = np.arange(len(tok), dtype=np.int64) - np.repeat(self.starts, lens)
        # A token repeated in a record is probed once (at its first position), as in _candidates.
        self.first = np.ones(len(tok), dtype=bool)
        self.first[1:] = (self.stok[1:] != self.stok[:-1]) | (pos[1:] == 0)
        self.bounds = np.array(_BOUNDS, dtype=np.int64)
        bucket = np.searchsorted(self.bounds, lens, side="right") - 1
        # Each record under its index prefix (as _index_record), as one sorted array of key·n + record.
        alpha_min = np.maximum(1, np.ceil(lens * frac - _EPS)).astype(np.int64)
        indexed = pos < np.repeat(np.minimum(lens, lens - alpha_min + _PREFIX_SLACK), lens)
        keys = self.stok[indexed] * _N_BUCKETS + np.repeat(bucket, lens)[indexed]
        self.postings = np.sort(keys * n + rec[indexed])
        # Each record's length window and the hits it needs (as _scored_candidates and _candidates).
        self.lo = np.maximum(1, np.ceil(lens * frac - _EPS)).astype(np.int64)
        self.hi = np.floor(lens / frac + _EPS).astype(np.int64)
        self.bucket_lo = np.searchsorted(self.bounds, self.lo, side="right") - 1
        self.bucket_hi = np.searchsorted(self.bounds, self.hi, side="right") - 1
        need = np.ceil(floor * (lens + self.lo) / 2.0 - _EPS)
        self.need = np.minimum(_PREFIX_SLACK, np.maximum(1, need)).astype(np.int64)

    def _pairs_by_prefix(self, start: int, end: int) -> tuple[_Near, _Near]:
        if not self._prefix_ready or end > self.horizon:
            self._prepare_prefix(end)
        floor, lens, n = self.threshold, self.lens, self.horizon
        queries = np.arange(start, end, dtype=np.int64)
        queries = queries[lens[queries] > 0]
        # One probe per (query, length bucket in its window) with that bucket's prefix length...
        n_buckets = self.bucket_hi[queries] - self.bucket_lo[queries] + 1
        probe_q = np.repeat(queries, n_buckets)
        probe_b = _ranges(self.bucket_lo[queries], n_buckets)
        m = lens[probe_q]
        shortest = np.maximum(self.lo[probe_q], self.bounds[probe_b])
        alpha = np.maximum(1, np.ceil(floor * (m + shortest) / 2.0 - _EPS)).astype(np.int64)
        keep = np.minimum(m, m - alpha + _PREFIX_SLACK)
        # ...then one per distinct token of that prefix.
        at = _ranges(self.starts[probe_q], keep)
        probe_q = np.repeat(probe_q, keep)
        probe_key = self.stok[at] * _N_BUCKETS + np.repeat(probe_b, keep)
        distinct = self.first[at]
        probe_q, probe_key = probe_q[distinct], probe_key[distinct] * n
        # Posting ranges cut at the block's end: later records are never this block's partners.
        first_hit = np.searchsorted(self.postings, probe_key)
        counts = np.searchsorted(self.postings, probe_key + end) - first_hit
        hit_q = np.repeat(probe_q, counts)
        hit_r = self.postings[_ranges(first_hit, counts)] % n
        ok = (hit_r < hit_q) & ((hit_r >= start) | self.kept[hit_r])
        ok &= (lens[hit_r] >= self.lo[hit_q]) & (lens[hit_r] <= self.hi[hit_q])
        pairs = np.sort(hit_q[ok] * n + hit_r[ok])
        if pairs.size == 0:
            return {}, {}
        run_start = np.flatnonzero(np.diff(pairs, prepend=-1))
        runs = np.diff(np.append(run_start, pairs.size))
        q, r = pairs[run_start] // n, pairs[run_start] % n
        enough = runs >= self.need[q]
        q, r = q[enough], r[enough]
        if q.size == 0:
            return {}, {}
        sims = process.cpdist(
            [self.seqs[i] for i in q.tolist()],
            [self.seqs[j] for j in r.tolist()],
            scorer=Indel.normalized_similarity,
            score_cutoff=self.cutoff,
            dtype=np.float64,
            workers=-1,
        )
        return self._collect(start, q, r, sims)


def _can_fork_worker() -> bool:
    """Whether one query at a time may use a forked worker: more than one core to run on, the 'fork' start
    method (Linux), and not a daemonic process (e.g. a multiprocessing pool's worker: no children allowed)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return (
        cores > 1
        and "fork" in multiprocessing.get_all_start_methods()
        and not multiprocessing.current_process().daemon
    )


def _query_worker(
    conn: multiprocessing.connection.Connection,
    parents_end: multiprocessing.connection.Connection,
    index: NearDuplicateIndex,
    id_lists: list[list[int]],
) -> None:
    """The forked half of ``_Greedy._query_in_parallel``: for each ``(added, lo, hi)`` received, add the
    records kept in the last block to the replica (same order as the parent), then send back the best
    matches of candidates ``lo..hi`` against it; ``None`` or a closed pipe ends it."""
    # The fork copied the parent's end of the pipe too: closed here, so the parent closing it reads as EOF.
    parents_end.close()
    try:
        while True:
            message = conn.recv()
            if message is None:
                return
            added, lo, hi = message
            for i in added:
                index._insert("", id_lists[i])  # keys are looked up in the parent's index
            conn.send([index._best(id_lists[i]) for i in range(lo, hi)])
    except (EOFError, OSError, KeyboardInterrupt):
        return  # the parent closed the pipe, went away or was interrupted: it cleans up after itself
    finally:
        conn.close()


def nearest_neighbours(
    items: Sequence[tuple[str, str]], *, floor: float = 0.3, stem: bool = False
) -> list[tuple[float, str | None]]:
    """For each (key, text) its max ROUGE-L against every *other* item and that item's key.

    Exact whenever the max is >= ``floor``; below it, the best score among the pairs that were scored (a
    lower bound, possibly ``(0.0, None)``). Ties go to the earliest item.
    """
    index = NearDuplicateIndex(threshold=1.0, stem=stem, floor=floor)
    id_lists = index._freeze_order(tokenize(text, stem=stem) for _, text in items)
    best = [0.0] * len(items)
    best_rid: list[int | None] = [None] * len(items)
    # Each pair is scored once, when its later item is queried against the earlier ones; ROUGE-L is
    # symmetric, so the score updates both ends.
    for i, ((key, _), ids) in enumerate(zip(items, id_lists, strict=True)):
        for score, j in index._scored_candidates(ids):
            if score == 0.0:
                continue
            current = best_rid[i]
            if score > best[i] or (score == best[i] and (current is None or j < current)):
                best[i], best_rid[i] = score, j
            if score > best[j]:
                best[j], best_rid[j] = score, i
        index._insert(key, ids)
    return [
        (score, items[rid][0] if rid is not None else None) for score, rid in zip(best, best_rid, strict=True)
    ]
