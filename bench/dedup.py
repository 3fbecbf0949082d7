"""ROUGE-L near-duplicate filter: ours against Alpaca's loop and against brute force, up to a million.

Three filters make the same greedy decisions (keep a text iff its max ROUGE-L F against every text kept
before it is <= 0.7):

* the reference, Stanford Alpaca's ``generate_instruction.py`` loop: ``rouge_score``'s tokenizer, then
  ``rouge_scorer._score_lcs`` against every instruction kept so far (pure Python, one pair at a time);
* brute force, the obvious fast approach: our tokens, each distinct token mapped to one code point, and
  rapidfuzz's bit-parallel LCS (``process.cdist`` with ``LCSseq``, all cores) of 64 candidates at a time
  against every text kept before them, then within those 64 in order; the F-measure from the LCS length
  with rouge_score's expression;
* ours, :func:`app.pipeline.rouge.greedy_filter` (``strategy="auto"``).

1. The first N real ASCII instructions of ``../shared/data`` (where both tokenizers agree) go through all
   three: ``speedup`` is reference ÷ ours, ``brute_speedup`` reference ÷ brute force.
2. Prefixes of a 1,000,000-instruction stream built from real text (every real instruction and every
   distinct sentence of the datasets' inputs and answers, en + zh; two-sentence prompts; injected
   near-duplicates: word substitutions, deletions, insertions, swaps, politeness openers, case and
   punctuation changes) go through brute force and ours at each of ``--sizes``: ``ours_vs_brute``.
   Sizes above ``--brute-max`` go through ours only, brute force's time extrapolated as in step 3
   (``brute_extrapolated`` in their row).
3. The whole stream (``--n-large``) goes through ours; brute force's time for the same work is its
   pairs/s, measured at the largest size of step 2 it ran, times the pairs it would score (known exactly
   from the decisions, which are identical): ``ours_vs_brute_large``.

Every comparison checks that the decisions are identical. Absolute times swing with the machine and its
load (``loadavg``, taken before and after); ratios measured in the same run do not, much.

Prints the figures, then one JSON line (keys listed in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import LCSseq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.pipeline.rouge import DedupDecision, greedy_filter, tokenize  # noqa: E402

DATA = ROOT.parent / "shared" / "data"

# Instruction-only sources, in the order the reference sees them.
INSTRUCTION_FILES = [
    ("gpteacher/codegen-instruct.json", "instruction"),
    ("gpteacher/roleplay-simple-deduped-roleplay-instruct.json", "instruction"),
    ("gpteacher/toolformer-dedupe-only-dataset.json", "instruction"),
    ("codealpaca/code_alpaca_2k.json", "instruction"),
    ("self-instruct/seed_tasks.jsonl", "instruction"),
    ("self-instruct/user_oriented_instructions.jsonl", "instruction"),
    ("alpaca_eval/text_davinci_003.model_outputs.json", "instruction"),
    ("alpacadatacleaned/gsm_8k_train.json", "instruction"),
    ("instructionwild/user_1.jsonl", "instruction"),
    ("instructionwild/user_2.jsonl", "instruction"),
    ("instructionwild/user_3.jsonl", "instruction"),
    ("wizardlm/WizardLM_testset.jsonl", "Instruction"),
    ("alpaca-chinese-dataset/zh-data-part-00.json", "instruction"),
    ("alpaca-chinese-dataset/zh-data-part-01.json", "instruction"),
    ("belle/zh_seed_tasks.json", "instruction"),
    ("belle/dev1K.json", "instruction"),
    ("instructionwild/seed_prompts_ch.jsonl", "instruction"),
]

_SENTENCE_END = re.compile(r"(?<=[.!?。！？\n])\s*")
_OPENERS = ["Please ", "Can you ", "Could you please ", "Now, ", "I want you to ", "请", "你能"]


def _records(path: Path) -> Iterator[Any]:
    """JSON array or JSON Lines (several .json files here are JSONL); malformed lines are skipped."""
    raw = path.read_text(encoding="utf-8")
    try:
        loaded = json.loads(raw)
    except json.JSONDecodeError:
        for line in raw.splitlines():
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue
        return
    yield from loaded if isinstance(loaded, list) else [loaded]


def real_instructions() -> list[str]:
    out: list[str] = []
    for name, field in INSTRUCTION_FILES:
        out.extend(str(r[field]) for r in _records(DATA / name) if isinstance(r, dict) and r.get(field))
    return out


def _strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _strings(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _strings(value)


def real_sentences() -> list[str]:
    """Every distinct sentence (20-400 chars) of every text field of every dataset, in a stable order."""
    seen: dict[str, None] = {}
    for path in sorted(DATA.rglob("*.json*")):
        for record in _records(path):
            for text in _strings(record):
                for sentence in _SENTENCE_END.split(text):
                    sentence = sentence.strip()
                    if 20 <= len(sentence) <= 400:
                        seen.setdefault(sentence, None)
    return list(seen)


def _is_cjk(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text[:20])


def near_duplicate(text: str, rnd: random.Random, vocabulary: list[str]) -> str:
    """A realistic near-copy: a few word edits, sometimes an opener, case or punctuation change."""
    cjk = _is_cjk(text)
    units = list(text) if cjk else text.split()
    if not units:
        return text
    edits = max(1, int(len(units) * rnd.uniform(0.02, 0.3)))
    for _ in range(edits):
        op = rnd.random()
        pos = rnd.randrange(len(units))
        if op < 0.4:
            units[pos] = rnd.choice(vocabulary) if not cjk else rnd.choice(text)
        elif op < 0.6 and len(units) > 1:
            del units[pos]
        elif op < 0.8:
            units.insert(pos, rnd.choice(vocabulary) if not cjk else rnd.choice(text))
        elif pos + 1 < len(units):
            units[pos], units[pos + 1] = units[pos + 1], units[pos]
    out = ("" if cjk else " ").join(units)
    roll = rnd.random()
    if roll < 0.15:
        out = rnd.choice(_OPENERS) + out[:1].lower() + out[1:]
    elif roll < 0.25:
        out = out.upper() if rnd.random() < 0.3 else out.rstrip(".!?。") + "?"
    return out


def million_stream(n: int, *, seed: int = 0) -> list[str]:
    """n instructions: real texts in a shuffled order, two-sentence prompts and ~25% near-duplicates."""
    rnd = random.Random(seed)
    real = list(dict.fromkeys(real_instructions() + real_sentences()))
    rnd.shuffle(real)
    vocabulary = [w for text in real[:20000] for w in text.split() if w.isascii()]
    out: list[str] = []
    next_real = 0
    while len(out) < n:
        roll = rnd.random()
        if roll < 0.25 and out:
            out.append(near_duplicate(rnd.choice(out), rnd, vocabulary))
        elif roll < 0.6 and next_real < len(real):
            out.append(real[next_real])
            next_real += 1
        else:
            a, b = rnd.choice(real), rnd.choice(real)
            out.append(a + ("" if _is_cjk(a) else " ") + b)
    return out


def reference_kept(texts: list[str], threshold: float) -> list[int]:
    """Stanford Alpaca's filter: rouge_score tokens, _score_lcs against every kept instruction."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    kept_tokens: list[list[str]] = []
    kept: list[int] = []
    for i, text in enumerate(texts):
        tokens = scorer._tokenizer.tokenize(text)
        scores = [rouge_scorer._score_lcs(tokens, other).fmeasure for other in kept_tokens]
        if scores and max(scores) > threshold:
            continue
        kept_tokens.append(tokens)
        kept.append(i)
    return kept


# Candidates per cdist call in the brute force: enough to amortise the call, few enough that the
# in-block pairs (scored in full, then read in order) stay a small share of the work.
BRUTE_BLOCK = 64
_SURROGATES = range(0xD800, 0xE000)


def _code_points(token_lists: list[list[str]]) -> list[str | list[int]]:
    """Each distinct token as one code point, first seen first (ints past Unicode's end)."""
    ids: dict[str, int] = {}
    out: list[str | list[int]] = []
    for tokens in token_lists:
        codes = [ids.setdefault(t, len(ids)) for t in tokens]
        codes = [c + len(_SURROGATES) if c >= _SURROGATES.start else c for c in codes]
        out.append("".join(map(chr, codes)) if not codes or max(codes) <= sys.maxunicode else codes)
    return out


def _rouge_f(lcs: np.ndarray, m: np.ndarray, n: np.ndarray) -> np.ndarray:
    """rouge_score's F-measure expression, elementwise (IEEE float64, so bit-identical to it)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = lcs / n
        recall = lcs / m
        f = 2 * precision * recall / (precision + recall)
    return np.where(lcs > 0, f, 0.0)


def brute_force(texts: list[str], threshold: float) -> tuple[list[tuple[bool, float, int | None]], int]:
    """(kept, max score, nearest index) per text and the number of pairs scored, every pair by cdist."""
    token_lists = [tokenize(t) for t in texts]
    seqs = _code_points(token_lists)
    lengths = np.array([len(t) for t in token_lists], dtype=np.float64)
    kept: list[int] = []
    kept_seqs: list[str | list[int]] = []
    out: list[tuple[bool, float, int | None]] = []
    pairs = 0
    for start in range(0, len(seqs), BRUTE_BLOCK):
        block = list(range(start, min(start + BRUTE_BLOCK, len(seqs))))
        queries = [seqs[i] for i in block]
        m = lengths[block][:, None]
        best = np.zeros(len(block))
        nearest = np.full(len(block), -1)
        if kept:
            lcs = process.cdist(queries, kept_seqs, scorer=LCSseq.similarity, dtype=np.int32, workers=-1)
            scores = _rouge_f(lcs, m, lengths[kept][None, :])
            best = scores.max(axis=1)
            nearest = np.asarray(kept)[scores.argmax(axis=1)]  # argmax: the first (earliest) maximum
            pairs += lcs.size
        inner = _rouge_f(
            process.cdist(queries, queries, scorer=LCSseq.similarity, dtype=np.int32, workers=-1),
            m,
            lengths[block][None, :],
        )
        pairs += inner.size
        kept_here: list[int] = []
        for a, i in enumerate(block):
            score, near = float(best[a]), int(nearest[a])
            for b in kept_here:
                if inner[a, b] > score:
                    score, near = float(inner[a, b]), block[b]
            keep = score <= threshold
            out.append((keep, score, near if score > 0 else None))
            if keep:
                kept_here.append(a)
                kept.append(i)
                kept_seqs.append(seqs[i])
    return out, pairs


def brute_force_pairs(kept: list[bool]) -> int:
    """Pairs brute force scores for these decisions: each block against the records kept before it, and
    itself."""
    pairs = 0
    kept_before = 0
    for start in range(0, len(kept), BRUTE_BLOCK):
        size = min(BRUTE_BLOCK, len(kept) - start)
        pairs += size * (kept_before + size)
        kept_before += sum(kept[start : start + size])
    return pairs


def same_decisions(ours: list[DedupDecision], brute: list[tuple[bool, float, int | None]], t: float) -> bool:
    """Same keep/reject flags, and the same max and nearest record wherever the max reaches t."""
    for i, (d, (kept, score, near)) in enumerate(zip(ours, brute, strict=True)):
        if d.kept != kept:
            print(f"  decision differs at {i}: ours {d}, brute force {(kept, score, near)}")
            return False
        if score >= t and (d.score, d.nearest) != (score, str(near)):
            print(f"  neighbour differs at {i}: ours {d}, brute force {(kept, score, near)}")
            return False
    return True


def repeats(n: int) -> int:
    """Timed runs per side: small runs take milliseconds, so one scheduling hiccup on a loaded machine
    would otherwise decide the ratio."""
    return 10 if n <= 2_000 else 3 if n <= 10_000 else 1


def timed_pair(
    a: Callable[[], Any], b: Callable[[], Any], repeat: int
) -> tuple[tuple[float, Any], tuple[float, Any]]:
    """Best of ``repeat`` runs of each, alternating a and b so that load drift hits both alike."""
    best_a, best_b, result_a, result_b = float("inf"), float("inf"), None, None
    for _ in range(repeat):
        start = time.perf_counter()
        result_a = a()
        best_a = min(best_a, time.perf_counter() - start)
        start = time.perf_counter()
        result_b = b()
        best_b = min(best_b, time.perf_counter() - start)
    return (best_a, result_a), (best_b, result_b)


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Best of ``repeat`` runs (the machine is shared: the minimum is the least disturbed one)."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--n", type=int, default=1900, help="records for the reference comparison")
    parser.add_argument(
        "--sizes",
        default="1000,1900,5000,10000,30000",
        help="stream prefixes timed with brute force and ours (comma-separated)",
    )
    parser.add_argument("--n-large", type=int, default=1_000_000, help="records for the large run (0: none)")
    parser.add_argument(
        "--brute-max",
        type=int,
        default=30_000,
        help="sizes above this are not run through brute force: its time is extrapolated from its pairs/s "
        "at the largest size that was (brute force at 100,000 scores ~7G pairs: ~20 min on 2 loaded cores)",
    )
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--skip-reference", action="store_true", help="no Alpaca loop (it takes minutes)")
    parser.add_argument(
        "--strategy",
        default="auto",
        choices=["auto", "index", "blocks", "query"],
        help="ours: greedy_filter's",
    )
    args = parser.parse_args()
    t = args.threshold
    load_start = loadavg()
    print(f"load average at start: {load_start} on {os.cpu_count()} CPUs")

    def ours_on(texts: list[str]) -> list[DedupDecision]:
        return greedy_filter(
            [], [(str(i), x) for i, x in enumerate(texts)], threshold=t, strategy=args.strategy
        )

    # 1. Real instructions: reference, brute force, ours. Latin text, where both tokenizers agree.
    texts = [x for x in real_instructions() if x.isascii()][: args.n]
    (ours_s, decisions), (brute_s, (brute, _)) = timed_pair(
        lambda: ours_on(texts), lambda: brute_force(texts, t), repeats(len(texts))
    )
    ours = [i for i, d in enumerate(decisions) if d.kept]
    identical = same_decisions(decisions, brute, t)
    reference_s = float("nan")
    if not args.skip_reference:
        start = time.perf_counter()
        reference = reference_kept(texts, t)
        reference_s = time.perf_counter() - start
        identical = identical and ours == reference
    print(
        f"first {len(texts)} real instructions: reference {reference_s:.1f} s, brute force {brute_s:.4f} s, "
        f"ours {ours_s:.4f} s; ours {reference_s / ours_s:.0f}x the reference, "
        f"{brute_s / ours_s:.2f}x brute force; kept {len(ours)}, identical={identical}"
    )

    # 2. Stream prefixes: brute force against ours.
    sizes = sorted(int(x) for x in args.sizes.split(",") if x)
    stream = million_stream(max([args.n_large, *sizes]))
    tokens = sum(len(tokenize(x)) for x in stream[:10000]) / min(len(stream), 10000)
    print(f"stream: {len(stream)} instructions, ~{tokens:.1f} tokens each")
    rows: list[dict[str, Any]] = []
    pairs_per_s = float("nan")
    for size in sizes:
        prefix = stream[:size]
        repeat = repeats(size)
        if size > args.brute_max and pairs_per_s == pairs_per_s:
            ours_n_s, ours_n = timed(lambda: ours_on(prefix), repeat)  # noqa: B023
            # Too long to run here: brute force's measured rate times the pairs it would score (known
            # exactly from the decisions, which are the same at every size it did run).
            pairs = brute_force_pairs([d.kept for d in ours_n])
            brute_n_s, same, extrapolated = pairs / pairs_per_s, None, True
        else:
            (ours_n_s, ours_n), (brute_n_s, (brute_n, pairs)) = timed_pair(
                lambda: ours_on(prefix),  # noqa: B023
                lambda: brute_force(prefix, t),  # noqa: B023
                repeat,
            )
            same = same_decisions(ours_n, brute_n, t)
            identical = identical and same
            pairs_per_s, extrapolated = pairs / brute_n_s, False
        rows.append(
            {
                "n": size,
                "ours_s": round(ours_n_s, 4),
                "brute_s": round(brute_n_s, 4),
                "brute_extrapolated": extrapolated,
                "ours_vs_brute": round(brute_n_s / ours_n_s, 2),
                "kept": sum(d.kept for d in ours_n),
                "brute_pairs": pairs,
                "identical": same,
                "loadavg": loadavg(),
            }
        )
        how = "extrapolated" if extrapolated else f"{pairs / brute_n_s / 1e6:.1f}M pairs/s"
        print(
            f"  n={size}: brute force {brute_n_s:.3f} s ({how}), "
            f"ours {ours_n_s:.3f} s: {brute_n_s / ours_n_s:.2f}x; identical={same}; load {loadavg()}"
        )

    # 3. The whole stream: ours measured, brute force extrapolated from its measured pairs/s.
    large: dict[str, Any] = {}
    if args.n_large:
        items = [(str(i), x) for i, x in enumerate(stream[: args.n_large])]
        start = time.perf_counter()
        decisions_large = greedy_filter([], items, threshold=t, strategy=args.strategy)
        large_s = time.perf_counter() - start
        kept_flags = [d.kept for d in decisions_large]
        work = brute_force_pairs(kept_flags)
        brute_large_s = work / pairs_per_s
        large = {
            "loadavg_large": loadavg(),
            "n_large": len(items),
            "n_1m_s": round(large_s, 1),
            "kept_1m": sum(kept_flags),
            "brute_pairs_large": work,
            "brute_large_s_extrapolated": round(brute_large_s),
            "ours_vs_brute_large": round(brute_large_s / large_s, 1),
        }
        print(
            f"large run: ours {large_s:.1f} s, kept {sum(kept_flags)}; brute force would score {work:.3g} "
            f"pairs: {brute_large_s:.0f} s at {pairs_per_s / 1e6:.1f}M pairs/s, "
            f"{brute_large_s / large_s:.1f}x ours; peak RSS {peak_rss_mb():.0f} MB"
        )

    measured = reference_s == reference_s  # NaN when skipped: JSON gets null
    print(
        json.dumps(
            {
                "n": len(texts),
                "reference_s": round(reference_s, 2) if measured else None,
                "brute_s": round(brute_s, 4),
                "ours_s": round(ours_s, 4),
                "speedup": round(reference_s / ours_s, 1) if measured else None,
                "brute_speedup": round(reference_s / brute_s, 1) if measured else None,
                "ours_vs_brute": round(brute_s / ours_s, 2),
                "identical": identical,
                "sizes": rows,
                "brute_pairs_per_s": round(pairs_per_s),
                **large,
                "strategy": args.strategy,
                "peak_rss_mb": round(peak_rss_mb()),
                "cpus": os.cpu_count(),
                "loadavg_start": load_start,
                "loadavg_end": loadavg(),
            }
        )
    )


if __name__ == "__main__":
    main()
