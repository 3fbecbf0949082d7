"""ROUGE-L: the tokenizer and score against rouge_score, and the pruned filter against brute force."""

from __future__ import annotations

import json
import math
import multiprocessing
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rapidfuzz.distance import LCSseq
from rouge_score import rouge_scorer, tokenizers

from app.pipeline import rouge
from app.pipeline.rouge import (
    NearDuplicateIndex,
    Strategy,
    greedy_filter,
    nearest_neighbours,
    rouge_l,
    rouge_l_f,
    tokenize,
)

# Tests that read real instructions take the ``shared_data`` fixture (tests/conftest.py): it skips them,
# and only them, where the datasets are absent; the others (hypothesis properties included) always run.


def _records(data: Path, name: str) -> list[dict[str, Any]]:
    raw = (data / name).read_text(encoding="utf-8")
    if name.endswith(".jsonl") or raw.lstrip().startswith("{"):
        return [json.loads(line) for line in raw.splitlines() if line.strip()]
    rows: list[dict[str, Any]] = json.loads(raw)
    return rows


def _latin_instructions(data: Path) -> list[str]:
    """Real instructions with templated near-duplicates: T0 wraps the same questions in many templates."""
    texts = [r["instruction"] for r in _records(data, "gpteacher/codegen-instruct.json")[:900]]
    texts += [r["instruction"] for r in _records(data, "codealpaca/code_alpaca_2k.json")[:900]]
    texts += [r["instruction"] for r in _records(data, "self-instruct/seed_tasks.jsonl")]
    for path in sorted((data / "self-instruct" / "t0_train_50k").glob("trec_*.jsonl")):
        texts += [r["prompt"] for r in _records(data, str(path.relative_to(data)))[:80]]
    for path in sorted((data / "self-instruct" / "t0_train_50k").glob("glue_qqp_*.jsonl")):
        texts += [r["prompt"] for r in _records(data, str(path.relative_to(data)))[:80]]
    return [t for t in texts if t.isascii()]


def _chinese_instructions(data: Path) -> list[str]:
    texts = [r["instruction"] for r in _records(data, "alpaca-chinese-dataset/zh-data-part-00.json")[:2000]]
    return texts + [r["instruction"] for r in _records(data, "belle/zh_seed_tasks.json")]


def _brute_force_greedy(
    token_lists: list[list[str]], threshold: float, pool: int = 0
) -> list[tuple[bool, float, int | None]]:
    """Every pair scored: (kept, max score, index of the first item reaching it) for each item after
    the first ``pool`` ones, which are kept unconditionally."""
    # rouge_l_f on every pair, with the tokens mapped to ints once (not per pair: that mapping was most of
    # this reference's time) and rouge_score's F-measure written out
    vocab: dict[str, int] = {}
    ids = [[vocab.setdefault(t, len(vocab)) for t in tokens] for tokens in token_lists]

    def rouge_l_f(i: int, j: int) -> float:
        a, b = ids[i], ids[j]
        lcs = LCSseq.similarity(a, b) if a and b else 0
        if lcs == 0:
            return 0.0
        precision, recall = lcs / len(b), lcs / len(a)
        return 2 * precision * recall / (precision + recall)

    kept: list[int] = list(range(pool))
    out = []
    for i in range(pool, len(token_lists)):
        best, best_j = 0.0, None
        for j in kept:
            score = rouge_l_f(i, j)
            if score > best:
                best, best_j = score, j
        out.append((best <= threshold, best, best_j))
        if best <= threshold:
            kept.append(i)
    return out


# -- tokenizer -------------------------------------------------------------------------------------------


def test_tokens_equal_rouge_score_tokens_on_real_ascii_instructions(shared_data):
    theirs = tokenizers.DefaultTokenizer(use_stemmer=False)
    texts = _latin_instructions(shared_data)
    assert len(texts) > 2000
    for text in texts:
        assert tokenize(text) == theirs.tokenize(text), text


def test_stemmed_tokens_equal_rouge_score_stemmed_tokens(shared_data):
    theirs = tokenizers.DefaultTokenizer(use_stemmer=True)
    for text in _latin_instructions(shared_data)[:400]:
        assert tokenize(text, stem=True) == theirs.tokenize(text), text


def test_cjk_characters_are_one_token_each_and_other_letters_are_kept():
    assert tokenize("给出三个保持健康的秘诀。") == list("给出三个保持健康的秘诀")
    assert tokenize("東京タワーに行きたい") == list("東京タワーに行きたい")
    assert tokenize("한국어 문장") == ["한", "국", "어", "문", "장"]
    # rouge_score would give ["caf", "au", "lait"] and [] for the Cyrillic sentence.
    assert tokenize("Café au lait") == ["café", "au", "lait"]
    assert tokenize("Привет, мир") == ["привет", "мир"]
    assert tokenize("用Python写ＡＰＩ") == ["用", "python", "写", "api"]


# -- score ------------------------------------------------------------------------------------------------

_WORDS = st.sampled_from(["a", "b", "c", "d", "e", "the", "cat", "2", "x9"])


@settings(max_examples=400, deadline=None)
@given(st.lists(_WORDS, max_size=30), st.lists(_WORDS, max_size=30))
def test_score_is_bit_identical_to_rouge_score_on_random_token_sequences(a, b):
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    expected = scorer.score(" ".join(a), " ".join(b))["rougeL"].fmeasure
    assert rouge_l_f(a, b) == expected
    assert rouge_l(" ".join(a), " ".join(b)) == expected


def test_score_is_bit_identical_to_rouge_score_on_real_instruction_pairs(shared_data):
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    texts = _latin_instructions(shared_data)
    rnd = random.Random(7)
    # Neighbours in the file are often near-duplicates (T0 templates), random pairs mostly are not.
    pairs = [(texts[i], texts[i + 1]) for i in range(len(texts) - 1)]
    pairs += [(rnd.choice(texts), rnd.choice(texts)) for _ in range(3000)]
    for a, b in pairs:
        assert rouge_l(a, b) == scorer.score(a, b)["rougeL"].fmeasure


def test_chinese_sharing_one_english_word_no_longer_scores_one(shared_data):
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    python_tasks = [
        t
        for t in _chinese_instructions(shared_data)
        if tokenizers.DefaultTokenizer().tokenize(t) == ["python"]
    ]
    assert len(python_tasks) >= 2
    a, b = python_tasks[0], python_tasks[1]
    assert scorer.score(a, b)["rougeL"].fmeasure == 1.0  # rouge_score's failure mode
    assert rouge_l(a, b) < 0.5


# -- greedy filter ---------------------------------------------------------------------------------------


STRATEGIES: list[Strategy] = ["index", "blocks", "query", "auto"]


def test_greedy_filter_keeps_exactly_what_rouge_score_on_every_pair_keeps(shared_data):
    """The reference is Alpaca's loop verbatim (rouge_score on every pair); it is slow, hence N = 500
    here. Larger pools are compared with brute-force LCS below, and bench/dedup.py checks every
    strategy's decisions against this same loop at N = 1,900 in each run."""
    n = 500
    texts = _latin_instructions(shared_data)
    rnd = random.Random(3)
    sample = [texts[i] for i in sorted(rnd.sample(range(len(texts)), n))]
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    reference_tokens = [scorer._tokenizer.tokenize(t) for t in sample]
    kept_tokens: list[list[str]] = []
    reference: list[bool] = []
    for tokens in reference_tokens:
        scores = [rouge_scorer._score_lcs(tokens, other).fmeasure for other in kept_tokens]
        keep = not scores or max(scores) <= 0.7
        reference.append(keep)
        if keep:
            kept_tokens.append(tokens)

    for strategy in STRATEGIES:
        decisions = greedy_filter(
            [], [(str(i), t) for i, t in enumerate(sample)], threshold=0.7, strategy=strategy
        )
        assert [d.kept for d in decisions] == reference, strategy
    assert 0 < reference.count(False) < len(reference)


def _mixed_instructions(data: Path) -> list[str]:
    """Latin and Chinese real instructions interleaved, so blocks and the index see both scripts at once."""
    latin = _latin_instructions(data)[:2500]
    chinese = _chinese_instructions(data)[:1000]
    return [t for pair in zip(latin[::2], latin[1::2], chinese, strict=False) for t in pair] + latin[2000:]


@pytest.fixture(scope="module")
def mixed_brute_force(shared_data: Path) -> tuple[list[str], list[tuple[bool, float, int | None]]]:
    """The mixed real instructions and their brute-force decisions (a pool of 175), computed once: every
    pair in Python takes a while."""
    texts = _mixed_instructions(shared_data)
    return texts, _brute_force_greedy([tokenize(t) for t in texts], 0.7, pool=175)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_matches_brute_force_on_real_latin_and_chinese_instructions(
    strategy, mixed_brute_force
):
    """Same decisions, and the same nearest neighbour and score whenever the max reaches the threshold;
    below it every strategy reports (0.0, None)."""
    texts, expected = mixed_brute_force
    assert sum(not t.isascii() for t in texts) > 500
    pool, candidates = texts[:175], texts[175:]
    decisions = greedy_filter(
        [(f"p{i}", t) for i, t in enumerate(pool)],
        [(f"c{i}", t) for i, t in enumerate(candidates)],
        strategy=strategy,
    )
    assert sum(not d.kept for d in decisions) > 200
    for decision, (kept, best, best_j) in zip(decisions, expected, strict=True):
        assert decision.kept == kept
        if best >= 0.7:
            assert best_j is not None
            assert decision.score == best
            assert decision.nearest == (f"p{best_j}" if best_j < 175 else f"c{best_j - 175}")
        else:
            assert (decision.score, decision.nearest) == (0.0, None)


def test_strategies_agree_across_many_blocks_with_pool_and_in_block_duplicates(shared_data):
    """Exact copies and near-copies land both in later blocks (against the pool) and in their original's
    own block (within it), and ties between equally near records go to the earliest."""
    texts = _mixed_instructions(shared_data)[:1200]
    rnd = random.Random(13)
    stream: list[str] = []
    for text in texts:
        stream.append(text)
        roll = rnd.random()
        if roll < 0.15:
            stream.append(text)  # same block, exact copy: ties with any earlier copy
        elif roll < 0.3:
            stream.append(rnd.choice(stream[-300:]) + " please")
    items = [(str(i), t) for i, t in enumerate(stream)]
    by_index = greedy_filter(items[:100], items[100:], strategy="index")
    by_blocks = greedy_filter(items[:100], items[100:], strategy="blocks")
    by_query = greedy_filter(items[:100], items[100:], strategy="query")
    assert by_index == by_blocks
    assert by_query == by_blocks
    assert sum(not d.kept for d in by_blocks) > 250


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_chinese_near_copies_are_rejected_with_their_original_as_nearest(strategy, shared_data):
    originals = _chinese_instructions(shared_data)[:1500]
    rnd = random.Random(11)
    copies = []
    for i in rnd.sample(range(len(originals)), 200):
        text = originals[i]
        edit = rnd.choice(["prefix", "replace", "punct"])
        if edit == "prefix":
            copy = "请" + text
        elif edit == "replace" and len(text) > 8:
            pos = rnd.randrange(len(text))
            copy = text[:pos] + "的" + text[pos + 1 :]
        else:
            copy = text.rstrip("。？！") + "？"
        copies.append((i, copy))
    decisions = greedy_filter(
        [(str(i), t) for i, t in enumerate(originals)],
        [(f"copy{i}", c) for i, c in copies],
        strategy=strategy,
    )
    originals_tokens = [tokenize(t) for t in originals]
    for (i, copy), decision in zip(copies, decisions, strict=True):
        if rouge_l(copy, originals[i]) > 0.7:
            assert not decision.kept
            best = max(rouge_l_f(tokenize(copy), o) for o in originals_tokens)
            assert decision.score == best
            assert decision.nearest is not None
            assert rouge_l(copy, originals[int(decision.nearest)]) == best
    assert sum(not d.kept for d in decisions) >= 190


# -- the index against brute force on adversarial random data --------------------------------------------

_SHORT = st.lists(st.sampled_from("abcdefgh"), max_size=14)


@settings(max_examples=120, deadline=None)
@given(
    st.lists(_SHORT, min_size=1, max_size=40),
    st.sampled_from([0.3, 0.5, 0.7, 0.9, 1.0]),
    st.sampled_from([0.2, 0.4, 0.7, 1.0]),
)
def test_pruning_never_changes_a_decision_or_a_reported_maximum(token_lists, threshold, floor):
    index = NearDuplicateIndex(threshold=threshold, floor=floor)
    effective_floor = min(floor, threshold)
    for i, (kept, best, best_j) in enumerate(_brute_force_greedy(token_lists, threshold)):
        decision = index.check_and_add(str(i), " ".join(token_lists[i]))
        assert decision.kept == kept
        if best >= effective_floor:
            assert (decision.score, decision.nearest) == (best, str(best_j))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(_SHORT, min_size=1, max_size=160),
    st.integers(min_value=0, max_value=20),
    st.sampled_from([0.3, 0.5, 0.7, 0.9, 1.0]),
)
def test_every_strategy_decides_like_brute_force_on_adversarial_records(token_lists, pool, threshold):
    """Tiny vocabularies, repeated tokens, empty records and exact ties, across several cdist blocks."""
    pool = min(pool, len(token_lists))
    expected = _brute_force_greedy(token_lists, threshold, pool=pool)
    items = [(str(i), " ".join(tokens)) for i, tokens in enumerate(token_lists)]
    for strategy in STRATEGIES:
        decisions = greedy_filter(items[:pool], items[pool:], threshold=threshold, strategy=strategy)
        for decision, (kept, best, best_j) in zip(decisions, expected, strict=True):
            assert decision.kept == kept, strategy
            if best >= threshold:
                assert (decision.score, decision.nearest) == (best, str(best_j)), strategy
            else:
                assert (decision.score, decision.nearest) == (0.0, None), strategy


@pytest.mark.parametrize("switch", [1, 130, 400])
def test_auto_switching_to_one_query_at_a_time_mid_run_keeps_every_decision(monkeypatch, shared_data, switch):
    """auto hands over to NearDuplicateIndex once _QUERY_POOL records are kept (tens of thousands in
    production); forced here at 1, 130 and 400 kept records (in the first block, mid-block, after several
    blocks and a cdist/prefix trial): the same decisions, scores and neighbours as cdist blocks alone."""
    texts = _mixed_instructions(shared_data)[:1400]
    rnd = random.Random(17)
    stream = [t if rnd.random() < 0.8 else rnd.choice(texts) + " now" for t in texts]
    items = [(str(i), t) for i, t in enumerate(stream)]
    expected = greedy_filter(items[:50], items[50:], strategy="blocks")
    monkeypatch.setattr(rouge, "_MIN_TIMED_POOL", 128)
    monkeypatch.setattr(rouge, "_MIN_TRIAL_REMAINING", 128)
    monkeypatch.setattr(rouge, "_QUERY_POOL", switch)
    switched: list[int] = []
    run_queries = rouge._Greedy._run_queries

    def spy(self: rouge._Greedy, start: int) -> None:
        switched.append(len(self.kept_ids))
        run_queries(self, start)

    monkeypatch.setattr(rouge._Greedy, "_run_queries", spy)
    assert greedy_filter(items[:50], items[50:], strategy="auto") == expected
    assert len(switched) == 1 and switched[0] >= switch
    assert sum(not d.kept for d in expected) > 100


def test_prefix_filter_extends_its_postings_when_a_block_passes_their_horizon(monkeypatch, shared_data):
    """The prefix filter's postings cover the first _PREFIX_HORIZON records (131,072 in production) and
    are rebuilt twice as far when a block passes them: forced here at 100 records, so this run
    builds them three times (542, 1,084, then all 1,440 records), with the same decisions as cdist
    blocks."""
    texts = _mixed_instructions(shared_data)[:1200]
    items = [(str(i), t + (" again" if i % 7 == 0 else "")) for i, t in enumerate(texts + texts[::5])]
    expected = greedy_filter(items[:30], items[30:], strategy="blocks")
    monkeypatch.setattr(rouge, "_PREFIX_HORIZON", 100)
    horizons: list[int] = []
    prepare = rouge._Greedy._prepare_prefix

    def spy(self: rouge._Greedy, end: int) -> None:
        prepare(self, end)
        horizons.append(self.horizon)

    monkeypatch.setattr(rouge._Greedy, "_prepare_prefix", spy)
    assert greedy_filter(items[:30], items[30:], strategy="index") == expected
    assert horizons == [542, 1084, len(items)]
    assert sum(not d.kept for d in expected) > 200


def _records_at_length_edges(rnd: random.Random, n: int, threshold: float) -> list[list[str]]:
    """Records of 1-300 tokens, and copies of earlier ones stretched or cut to exactly the longest or
    shortest length at which they can still reach ``threshold`` (one token past it, too), or lightly
    edited: pairs on both sides of every point where cdist splits a block by length (16, 32, 64, 128, 256
    tokens) and on the edges of each length window."""
    vocabulary = [f"w{i}" for i in range(40)]
    frac = threshold / (2 - threshold)
    out: list[list[str]] = []
    for _ in range(n):
        roll = rnd.random()
        if not out or roll < 0.3:
            out.append(rnd.choices(vocabulary, k=int(math.exp(rnd.uniform(0, math.log(300))))))
            continue
        base = list(rnd.choice(out))
        slack = rnd.choice([0, 0, 1])
        if roll < 0.55:  # the base inside a longer record: LCS = len(base), F on the edge
            extra = max(0, math.floor(len(base) / frac) - len(base) + slack)
            for _ in range(extra):
                base.insert(rnd.randrange(len(base) + 1), rnd.choice(vocabulary))
        elif roll < 0.8:  # a subsequence of the base, as short as it can be
            keep = max(1, math.ceil(len(base) * frac) - slack)
            base = [base[i] for i in sorted(rnd.sample(range(len(base)), min(keep, len(base))))]
        else:
            for _ in range(max(1, len(base) // 8)):
                base[rnd.randrange(len(base))] = rnd.choice(vocabulary)
        out.append(base)
    return out


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.9])
def test_every_strategy_decides_like_brute_force_on_the_edges_of_the_length_windows(threshold):
    token_lists = _records_at_length_edges(random.Random(int(threshold * 10)), 700, threshold)
    expected = _brute_force_greedy(token_lists, threshold, pool=40)
    items = [(str(i), " ".join(tokens)) for i, tokens in enumerate(token_lists)]
    assert sum(not kept for kept, _, _ in expected) > 150
    assert sum(threshold <= best < threshold + 0.01 for _, best, _ in expected) > 10  # on the edge
    for strategy in STRATEGIES:
        decisions = greedy_filter(items[:40], items[40:], threshold=threshold, strategy=strategy)
        for decision, (kept, best, best_j) in zip(decisions, expected, strict=True):
            assert decision.kept == kept, strategy
            if best >= threshold:
                assert (decision.score, decision.nearest) == (best, str(best_j)), strategy
            else:
                assert (decision.score, decision.nearest) == (0.0, None), strategy


def test_index_stays_exact_across_reorders_and_for_unseen_query_words():
    rnd = random.Random(5)
    vocabulary = [f"w{i}" for i in range(60)]
    texts = [" ".join(rnd.choices(vocabulary, k=rnd.randint(1, 12))) for _ in range(2600)]
    index = NearDuplicateIndex(threshold=0.7, floor=0.4)
    for i, text in enumerate(texts):  # 2600 records: the rarity order is rebuilt at 1024 and 2048
        index.add(str(i), text)
    token_lists = [tokenize(t) for t in texts]
    for _ in range(150):
        query = rnd.choices(vocabulary, k=rnd.randint(1, 12)) + rnd.choices(
            ["unseen", "new"], k=rnd.randint(0, 2)
        )
        rnd.shuffle(query)
        scores = [rouge_l_f(query, t) for t in token_lists]
        best = max(scores)
        score, key = index.nearest(" ".join(query))
        if best >= 0.4:
            assert (score, key) == (best, str(scores.index(best)))
        else:
            assert score <= best
    assert len(index) == len(texts)


def test_nearest_neighbours_gives_every_items_exact_max_above_the_floor(shared_data):
    texts = _latin_instructions(shared_data)[:1200] + _chinese_instructions(shared_data)[:300]
    items = [(str(i), t) for i, t in enumerate(texts)]
    result = nearest_neighbours(items, floor=0.3)
    token_lists = [tokenize(t) for t in texts]
    for i in random.Random(2).sample(range(len(items)), 150):
        scores = [rouge_l_f(token_lists[i], other) if j != i else -1.0 for j, other in enumerate(token_lists)]
        best = max(scores)
        if best >= 0.3:
            assert result[i] == (best, str(scores.index(best)))
        else:
            assert result[i][0] <= best


def test_a_record_contained_in_a_longer_one_at_the_edge_of_the_length_window_is_found():
    """The shorter record (67 tokens) is a subsequence of the longer (129): LCS 67, F = 134/196 = 0.684,
    and at threshold 0.68 both 67 and the least LCS that can qualify sit on the window's edge. rapidfuzz
    3.14 drops this pair when asked for LCS >= 67 exactly; the index asks for one less."""
    short = "habdchfehdefhadcfdccdabbagecddgbcbbeddgdhcagbbeagfaefaececbgfcehgdd"
    long = (
        "hffabddcghfgfeehhdefhaabdcccgafdccdabbagdeefcddaggbfcbbgaedadffhhefebbgfdhgcbeagbhebbbeeadggcgffhfb"
        "aeacefaeegdbeceecbggfhbacehgdd"
    )
    assert LCSseq.similarity(short, long) == len(short)
    index = NearDuplicateIndex(threshold=0.68)
    index.add("short", " ".join(short))
    decision = index.check_and_add("long", " ".join(long))
    assert (decision.kept, decision.score, decision.nearest) == (
        False,
        rouge_l_f(list(long), list(short)),
        "short",
    )
    for strategy in STRATEGIES:
        items = [("short", " ".join(short)), ("long", " ".join(long))]
        assert not greedy_filter([], items, threshold=0.68, strategy=strategy)[1].kept, strategy


def test_check_and_add_reports_the_neighbour_and_only_adds_kept_texts():
    index = NearDuplicateIndex(threshold=0.7)
    index.add("seed", "Give three tips for staying healthy.")
    rejected = index.check_and_add("a", "Give me three tips for staying healthy!")
    kept = index.check_and_add("b", "Write a haiku about the autumn rain in Kyoto.")
    assert not rejected.kept
    assert rejected.nearest == "seed"
    assert rejected.score == rouge_l(
        "Give me three tips for staying healthy!", "Give three tips for staying healthy."
    )
    assert kept.kept
    assert len(index) == 2
    assert index.nearest("Write a haiku about the autumn rain in Osaka.")[1] == "b"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_empty_texts_score_zero_and_are_kept(strategy):
    decisions = greedy_filter(
        [("seed", "..."), ("x", "hello")], [("a", ""), ("b", "!!!"), ("c", "")], strategy=strategy
    )
    assert [(d.kept, d.score, d.nearest) for d in decisions] == [(True, 0.0, None)] * 3


def test_invalid_threshold_is_refused():
    with pytest.raises(ValueError, match="threshold"):
        NearDuplicateIndex(threshold=0.0)


_MIXED = st.lists(
    st.sampled_from(["的", "是", "天", "气", "好", "は", "한", "a", "cat", "ü", "2"]), max_size=12
)


@settings(max_examples=40, deadline=None)
@given(st.lists(_MIXED, min_size=1, max_size=150), st.sampled_from([0.5, 0.7]))
def test_every_strategy_decides_like_rouge_score_on_random_cjk_and_mixed_text(token_lists, threshold):
    """Chinese, Japanese, Korean and Latin pieces, written with and without spaces, across several cdist
    blocks: every strategy's decisions, maxima and neighbours equal every pair scored by rouge_score's own
    LCS F-measure on our tokens."""
    texts = [("" if i % 2 else " ").join(pieces) for i, pieces in enumerate(token_lists)]
    tokens = [tokenize(text) for text in texts]
    kept: list[int] = []
    expected: list[tuple[bool, float, int | None]] = []
    for i, toks in enumerate(tokens):
        best, best_j = 0.0, None
        for j in kept:
            score = rouge_scorer._score_lcs(toks, tokens[j]).fmeasure
            if score > best:
                best, best_j = score, j
        expected.append((best <= threshold, best, best_j))
        if best <= threshold:
            kept.append(i)
    items = [(str(i), text) for i, text in enumerate(texts)]
    for strategy in STRATEGIES:
        decisions = greedy_filter([], items, threshold=threshold, strategy=strategy)
        for decision, (keep, best, best_j) in zip(decisions, expected, strict=True):
            assert decision.kept == keep, strategy
            if best >= threshold:
                assert (decision.score, decision.nearest) == (best, str(best_j)), strategy
            else:
                assert (decision.score, decision.nearest) == (0.0, None), strategy


# -- one query at a time on two cores: the forked worker -------------------------------------------------

_FORK = "fork" in multiprocessing.get_all_start_methods()


def _force_parallel_queries(monkeypatch: pytest.MonkeyPatch, block: int) -> list[int]:
    """Make "query" use the forked worker at any size and on any machine (one core too: forking still
    works), ``block`` candidates at a time; the returned list gets each block's size as it is resolved."""
    monkeypatch.setattr(rouge, "_PARALLEL_MIN", 0)
    monkeypatch.setattr(rouge, "_QUERY_BLOCK", block)
    monkeypatch.setattr(rouge, "_can_fork_worker", lambda: True)
    resolved: list[int] = []
    resolve = rouge._Greedy._resolve_block

    def spy(self: rouge._Greedy, start: int, end: int, *args: Any) -> list[int]:
        resolved.append(end - start)
        return resolve(self, start, end, *args)

    monkeypatch.setattr(rouge._Greedy, "_resolve_block", spy)
    return resolved


def _sequential_queries(
    items: list[tuple[str, str]], pool: int, threshold: float
) -> list[rouge.DedupDecision]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rouge, "_can_fork_worker", lambda: False)
        return greedy_filter(items[:pool], items[pool:], threshold=threshold, strategy="query")


@pytest.mark.skipif(not _FORK, reason="needs the 'fork' start method")
@settings(max_examples=40, deadline=None)
@given(
    st.lists(_SHORT, min_size=1, max_size=120),
    st.integers(min_value=0, max_value=20),
    st.sampled_from([0.3, 0.5, 0.7, 1.0]),
    st.sampled_from([1, 3, 8, 64]),
)
def test_parallel_queries_decide_like_brute_force_and_the_sequential_path(
    token_lists, pool, threshold, block
):
    """Tiny vocabularies: exact duplicates, empty records and exact ties within a block, across blocks and
    against the pool, decided with the worker's lookups: the same flags, maxima and neighbours."""
    pool = min(pool, len(token_lists))
    expected = _brute_force_greedy(token_lists, threshold, pool=pool)
    items = [(str(i), " ".join(tokens)) for i, tokens in enumerate(token_lists)]
    sequential = _sequential_queries(items, pool, threshold)
    with pytest.MonkeyPatch.context() as mp:
        resolved = _force_parallel_queries(mp, block)
        decisions = greedy_filter(items[:pool], items[pool:], threshold=threshold, strategy="query")
    assert sum(resolved) == len(items) - pool
    assert decisions == sequential
    for decision, (kept, best, best_j) in zip(decisions, expected, strict=True):
        assert decision.kept == kept
        if best >= threshold:
            assert (decision.score, decision.nearest) == (best, str(best_j))
        else:
            assert (decision.score, decision.nearest) == (0.0, None)
    assert not multiprocessing.active_children()


@pytest.mark.skipif(not _FORK, reason="needs the 'fork' start method")
def test_parallel_queries_break_ties_between_pool_and_block_records_like_the_sequential_path(monkeypatch):
    """At a threshold equal to the pairs' score (so tied records are kept and reported): a candidate tied
    between a pool record and an earlier one of its block gets the pool record; tied between two of its
    block, the earlier; an exact copy of a block record beats a lesser pool match."""
    texts = [
        "a b c d x",  # 0 pool
        "q r s t u",  # 1 pool
        "a b c d y",  # 2: t with 0
        "a b c d z",  # 3: t with 0 and with 2: the pool's 0
        "e f g h i",  # 4: nothing near
        "e f g h j",  # 5: t with 4
        "e f g h k",  # 6: t with 4 and with 5: the earlier, 4
        "a b c d y",  # 7: a copy of 2 (1.0), t with 0 and 3: rejected, nearest 2
    ]
    t = rouge_l(texts[0], texts[2])
    items = [(str(i), x) for i, x in enumerate(texts)]
    sequential = _sequential_queries(items, 2, t)
    resolved = _force_parallel_queries(monkeypatch, 8)
    decisions = greedy_filter(items[:2], items[2:], threshold=t, strategy="query")
    assert resolved == [6]
    assert decisions == sequential
    assert [(d.kept, d.score, d.nearest) for d in decisions] == [
        (True, t, "0"),
        (True, t, "0"),
        (True, 0.0, None),
        (True, t, "4"),
        (True, t, "4"),
        (False, 1.0, "2"),
    ]
    expected = _brute_force_greedy([x.split() for x in texts], t, pool=2)
    assert [(d.kept, d.score, d.nearest) for d in decisions] == [
        (k, b, str(j)) if b >= t else (k, 0.0, None) for k, b, j in expected
    ]


@pytest.mark.skipif(not _FORK, reason="needs the 'fork' start method")
def test_parallel_queries_on_real_instructions_with_near_duplicates_within_blocks(monkeypatch, shared_data):
    texts = _mixed_instructions(shared_data)[:900]
    rnd = random.Random(5)
    stream: list[str] = []
    for t in texts:
        stream.append(t)
        if rnd.random() < 0.3:  # a near copy a few records later: often in the same block
            stream.insert(len(stream) - rnd.randrange(3), t + " now")
    items = [(str(i), t) for i, t in enumerate(stream)]
    expected = greedy_filter(items[:40], items[40:], strategy="blocks")
    resolved = _force_parallel_queries(monkeypatch, 32)
    assert greedy_filter(items[:40], items[40:], strategy="query") == expected
    assert sum(resolved) == len(items) - 40
    in_block = sum(
        1
        for i, d in enumerate(expected, start=40)
        if not d.kept and d.nearest is not None and int(d.nearest) >= 40 + (i - 40) // 32 * 32
    )
    assert in_block > 20


def test_one_query_at_a_time_stays_sequential_without_a_second_core_fork_or_enough_work(monkeypatch):
    """No worker in a daemonic process (a pool's worker may not have children), on one core, or for fewer
    candidates than _PARALLEL_MIN: the sequential path, same decisions."""
    token_lists = _records_at_length_edges(random.Random(3), 300, 0.7)
    items = [(str(i), " ".join(tokens)) for i, tokens in enumerate(token_lists)]
    expected = greedy_filter(items[:20], items[20:], strategy="blocks")
    resolved: list[int] = []
    resolve = rouge._Greedy._resolve_block
    monkeypatch.setattr(
        rouge._Greedy, "_resolve_block", lambda self, *a: resolved.append(1) or resolve(self, *a)
    )
    # Enough work for a worker, but none allowed:
    monkeypatch.setattr(rouge, "_PARALLEL_MIN", 0)
    monkeypatch.setattr(rouge, "_QUERY_BLOCK", 16)
    with monkeypatch.context() as mp:
        mp.setitem(multiprocessing.current_process()._config, "daemon", True)
        assert not rouge._can_fork_worker()
        assert greedy_filter(items[:20], items[20:], strategy="query") == expected
    with monkeypatch.context() as mp:
        mp.setattr(rouge.os, "sched_getaffinity", lambda pid: {0})
        assert not rouge._can_fork_worker()
        assert greedy_filter(items[:20], items[20:], strategy="query") == expected
    with monkeypatch.context() as mp:
        mp.setattr(rouge.multiprocessing, "get_all_start_methods", lambda: ["spawn"])
        assert not rouge._can_fork_worker()
        assert greedy_filter(items[:20], items[20:], strategy="query") == expected
    assert resolved == []
    # Allowed, but too few candidates left:
    monkeypatch.setattr(rouge, "_can_fork_worker", lambda: True)
    monkeypatch.setattr(rouge, "_PARALLEL_MIN", len(items))
    assert greedy_filter(items[:20], items[20:], strategy="query") == expected
    assert resolved == []
    # Allowed and enough: the worker is used (so the cases above did not pass by never using it).
    monkeypatch.setattr(rouge, "_PARALLEL_MIN", 0)
    assert greedy_filter(items[:20], items[20:], strategy="query") == expected
    assert resolved


@pytest.mark.skipif(not _FORK, reason="needs the 'fork' start method")
def test_a_worker_that_dies_leaves_the_rest_to_the_sequential_path(monkeypatch):
    """A worker that exits at once (killed, out of memory): the first block's lookups never come, the
    sequential path decides everything, and no process is left behind."""
    token_lists = _records_at_length_edges(random.Random(4), 300, 0.7)
    items = [(str(i), " ".join(tokens)) for i, tokens in enumerate(token_lists)]
    expected = greedy_filter(items[:20], items[20:], strategy="blocks")
    resolved = _force_parallel_queries(monkeypatch, 16)
    monkeypatch.setattr(rouge, "_query_worker", lambda conn, *args: conn.close())
    assert greedy_filter(items[:20], items[20:], strategy="query") == expected
    assert resolved == []
    assert not multiprocessing.active_children()


@pytest.mark.skipif(not _FORK, reason="needs the 'fork' start method")
def test_an_error_while_resolving_ends_the_worker(monkeypatch):
    token_lists = _records_at_length_edges(random.Random(6), 200, 0.7)
    items = [(str(i), " ".join(tokens)) for i, tokens in enumerate(token_lists)]
    _force_parallel_queries(monkeypatch, 16)

    def fail(self: rouge._Greedy, *args: Any) -> list[int]:
        raise RuntimeError("boom")

    monkeypatch.setattr(rouge._Greedy, "_resolve_block", fail)
    with pytest.raises(RuntimeError, match="boom"):
        greedy_filter(items[:20], items[20:], strategy="query")
    assert not multiprocessing.active_children()
