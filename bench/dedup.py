"""ROUGE-L near-duplicate filter: ours against the Alpaca-style reference loop, then at a million.

1. The first N real instructions from ``../shared/data`` go through the reference (Stanford Alpaca's
   ``generate_instruction.py`` loop: tokenize once with ``rouge_score``'s tokenizer, then
   ``rouge_scorer._score_lcs`` against every instruction kept so far; keep iff the max is <= 0.7) and
   through :func:`app.pipeline.rouge.greedy_filter`. ``identical`` says whether the kept sets are equal.
2. A 1,000,000-instruction stream built from real text goes through ours (``n_1m_s``): every real
   instruction and every distinct sentence of the datasets' inputs and answers (en + zh), two-sentence
   prompts made of two of them, and injected near-duplicates (word substitutions, deletions,
   insertions, swaps, added politeness openers, case and punctuation changes) of earlier items.

Prints the figures, then one JSON line: {"n", "reference_s", "ours_s", "speedup", "identical", "n_1m_s",
"kept_1m", "peak_rss_mb", ...}.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.pipeline.rouge import greedy_filter, tokenize  # noqa: E402

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


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--n", type=int, default=1900, help="records for the reference comparison")
    parser.add_argument("--n-large", type=int, default=1_000_000, help="records for the large run")
    parser.add_argument("--threshold", type=float, default=0.7)
    args = parser.parse_args()

    # The comparison is on Latin text, where both tokenizers agree token for token.
    texts = [t for t in real_instructions() if t.isascii()][: args.n]
    items = [(str(i), t) for i, t in enumerate(texts)]

    start = time.perf_counter()
    decisions = greedy_filter([], items, threshold=args.threshold)
    ours_s = time.perf_counter() - start
    ours = [i for i, d in enumerate(decisions) if d.kept]

    start = time.perf_counter()
    reference = reference_kept(texts, args.threshold)
    reference_s = time.perf_counter() - start
    identical = ours == reference
    print(
        f"first {len(texts)} real instructions: reference {reference_s:.1f} s, ours {ours_s:.3f} s, "
        f"speedup {reference_s / ours_s:.0f}x, kept {len(ours)} vs {len(reference)}, identical={identical}"
    )

    stream = million_stream(args.n_large)
    tokens = sum(len(tokenize(t)) for t in stream[:10000]) / min(len(stream), 10000)
    print(f"large stream: {len(stream)} instructions, ~{tokens:.1f} tokens each")
    start = time.perf_counter()
    large = greedy_filter([], [(str(i), t) for i, t in enumerate(stream)], threshold=args.threshold)
    n_1m_s = time.perf_counter() - start
    kept_large = sum(d.kept for d in large)
    print(f"large run: {n_1m_s:.1f} s, kept {kept_large}, peak RSS {peak_rss_mb():.0f} MB")

    print(
        json.dumps(
            {
                "n": len(texts),
                "reference_s": round(reference_s, 2),
                "ours_s": round(ours_s, 4),
                "speedup": round(reference_s / ours_s, 1),
                "identical": identical,
                "n_large": len(stream),
                "n_1m_s": round(n_1m_s, 1),
                "kept_1m": kept_large,
                "peak_rss_mb": round(peak_rss_mb()),
            }
        )
    )


if __name__ == "__main__":
    main()
