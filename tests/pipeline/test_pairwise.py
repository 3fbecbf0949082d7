"""Evaluation judging: both orders, the tie rule, references, parsing, win rates and their intervals,
categories, length control, resume — against the fake teacher over HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.pipeline.llm import Gateway
from app.pipeline.pairwise import (
    EvalPrompt,
    PairVerdict,
    PairwiseParams,
    RunSummary,
    ScoreParams,
    ScoreVerdict,
    WinRate,
    all_pairs,
    bootstrap_interval,
    judge_calls,
    length_controlled_win_rate,
    pairwise_prompt,
    parse_rating,
    parse_verdict,
    run_pairwise,
    run_scoring,
    single_prompt,
    summarise_pairwise,
    summarise_scores,
)
from tests.fake_teacher import FakeTeacher, teacher_for
from tests.test_layering import _modules_after


@pytest.fixture(scope="module")
def server() -> Iterator[FakeTeacher]:
    with FakeTeacher.start() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeTeacher) -> FakeTeacher:
    server.reset()
    return server


def pairwise(
    fake: FakeTeacher,
    prompts: Sequence[EvalPrompt],
    pairs: Sequence[tuple[str, str]] = (("tuned", "base"),),
    params: PairwiseParams | None = None,
    done: Sequence[PairVerdict] = (),
    *,
    budget_usd: float | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    batches: list[int] | None = None,
) -> tuple[RunSummary, list[PairVerdict]]:
    verdicts: list[PairVerdict] = []

    def emit(batch: list[PairVerdict]) -> None:
        verdicts.extend(batch)
        if batches is not None:
            batches.append(len(batch))

    async def main() -> RunSummary:
        teacher = teacher_for(fake, max_concurrency=16, price_in_per_1k=1.0, price_out_per_1k=0.0)
        async with Gateway(teacher, budget_usd=budget_usd) as gateway:
            return await run_pairwise(
                gateway=gateway,
                prompts=prompts,
                pairs=pairs,
                params=params or PairwiseParams(),
                emit=emit,
                done=done,
                should_stop=should_stop,
            )

    return asyncio.run(main()), verdicts


def overall(prompts: Sequence[EvalPrompt], verdicts: Sequence[PairVerdict]) -> WinRate:
    (rate,) = [r for r in summarise_pairwise(prompts, verdicts).win_rates if r.category is None]
    return rate


def reference_set(n: int, *, matched: int, language: str = "en") -> list[EvalPrompt]:
    """``tuned`` gives the reference answer on the first ``matched`` prompts; ``base`` never does."""
    prompts = []
    for i in range(n):
        if language == "zh":
            text, reference = f"第{i}个问题：请解释光合作用的第{i}个步骤。", f"参考答案{i}：叶绿素吸收光能。"
            base = f"回答{i}：这个问题很复杂，" + "需要具体分析。" * (1 + i % 3)
            other = f"回答{i}：植物会呼吸。"
        else:
            text, reference = f"Question {i}: what is {i} + {i}?", f"{i} + {i} = {2 * i}."
            base = f"Let me think about {i} + {i}. " + "It is a tricky sum. " * (1 + i % 3)
            other = f"It is {2 * i + 1}, I believe."
        tuned = reference if i < matched else other
        prompts.append(
            EvalPrompt(id=f"p{i}", text=text, reference=reference, answers={"tuned": tuned, "base": base})
        )
    return prompts


# --- the tie rule and the reference ---------------------------------------------------------------


def test_a_judge_that_always_prefers_the_first_position_yields_only_ties(fake: FakeTeacher) -> None:
    fake.set_judge("first")
    prompts = reference_set(12, matched=12)
    summary, verdicts = pairwise(fake, prompts)
    assert summary.decided == 12
    assert all(v.ab.choice == "A" and v.ba.choice == "A" for v in verdicts)
    assert all(v.outcome == "tie" and v.consistent is False for v in verdicts)
    rate = overall(prompts, verdicts)
    assert (rate.wins, rate.ties, rate.losses, rate.consistent) == (0, 12, 0, 0)
    assert rate.win_rate == 0.5


def test_both_orders_are_asked_and_both_rationales_kept(fake: FakeTeacher) -> None:
    fake.set_judge("reference")
    prompts = reference_set(4, matched=4)
    _, verdicts = pairwise(fake, prompts)
    assert fake.stats()["completions"] == judge_calls(prompts, [("tuned", "base")]) == 8
    for v in verdicts:
        assert (v.ab.swapped, v.ba.swapped) == (False, True)
        # tuned is shown first in one order and second in the other, and the judge followed it
        assert (v.ab.choice, v.ba.choice) == ("A", "B")
        assert v.ab.rationale and v.ba.rationale and v.ab.key != v.ba.key
        assert v.outcome == "a" and v.consistent is True


def test_the_system_giving_the_reference_answer_wins_with_an_interval_excluding_one_half(
    fake: FakeTeacher,
) -> None:
    fake.set_judge("reference")
    prompts = reference_set(30, matched=24)
    _, verdicts = pairwise(fake, prompts)
    rate = overall(prompts, verdicts)
    assert (rate.n, rate.wins, rate.ties, rate.losses) == (30, 24, 6, 0)
    assert rate.win_rate == 0.9
    assert rate.ci_low is not None and rate.ci_high is not None
    assert 0.5 < rate.ci_low <= 0.9 <= rate.ci_high <= 1.0


def test_chinese_prompts_are_judged_with_the_chinese_template(fake: FakeTeacher) -> None:
    fake.set_judge("reference")
    prompts = reference_set(10, matched=8, language="zh")
    text = pairwise_prompt(prompts[0], "甲", "乙", params=PairwiseParams(language="zh"))
    assert "[助手A的回答开始]" in text and "[参考答案开始]" in text and "Assistant" not in text
    _, verdicts = pairwise(fake, prompts, params=PairwiseParams(language="zh"))
    rate = overall(prompts, verdicts)
    assert (rate.wins, rate.ties, rate.losses) == (8, 2, 0)


def test_without_the_reference_the_judge_cannot_tell_the_systems_apart(fake: FakeTeacher) -> None:
    fake.set_judge("reference")
    prompts = reference_set(10, matched=10)
    assert "Reference Answer" not in pairwise_prompt(
        prompts[0], "x", "y", params=PairwiseParams(use_reference=False)
    )
    _, verdicts = pairwise(fake, prompts, params=PairwiseParams(use_reference=False))
    assert {v.outcome for v in verdicts} == {"tie"}


def test_the_curators_rubric_replaces_the_default_one() -> None:
    prompt = reference_set(1, matched=1)[0]
    default = pairwise_prompt(prompt, "x", "y", params=PairwiseParams())
    custom = pairwise_prompt(prompt, "x", "y", params=PairwiseParams(rubric="RUBRIC-77: brevity wins"))
    assert "Extra length is not a merit" in default and "RUBRIC-77" not in default
    assert "RUBRIC-77: brevity wins" in custom and "Extra length is not a merit" not in custom
    single = single_prompt(prompt, "x", params=ScoreParams(rubric="RUBRIC-78"))
    assert "RUBRIC-78" in single and "Rating: [[5]]" in single


def test_the_rubric_reaches_the_judge(fake: FakeTeacher) -> None:
    prompts = reference_set(3, matched=0)
    fake.script_response("RUBRIC-79", "[[B]]", times=None)
    _, verdicts = pairwise(fake, prompts, params=PairwiseParams(rubric="RUBRIC-79"))
    assert all(v.ab.choice == "B" and v.ba.choice == "B" for v in verdicts)


# --- parsing what judges write --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "choice"),
    [
        ("Assistant A is more precise.\n\n[[A]]", "A"),
        ("[[ b ]]", "B"),
        ("Both are fine. [[C]]", "tie"),
        ('I output "[[A]]" if A is better, "[[B]]" if B is better.\nAfter thought: [[B]]', "B"),
        ('```json\n{"winner": "Assistant B", "rationale": "More complete."}\n```', "B"),
        ('{"verdict": "tie", "reason": "same"}', "tie"),
        ('{"winner": "A", "rationale": "Assistant A cites the correct formula and the', "A"),
        ("Assistant B explains the steps well, so my verdict is [[B", "B"),
        ("A", "A"),
        ("**B**", "B"),
        ("Tie.", "tie"),
        ("Final verdict: Assistant A", "A"),
        ("My final decision: **B**", "B"),
        ("Verdict: tie", "tie"),
        ("Verdict: a tie", "tie"),
        ("Overall, Assistant B is clearly better.", "B"),
        ("Both answers are equally good.", "tie"),
        ("最终裁决：[[A]]", "A"),
        ("助手B的回答更好，因为它更完整。", "B"),
        ("两个回答不相上下。", "tie"),
    ],
)
def test_verdicts_in_the_formats_judges_write(text: str, choice: str) -> None:
    parsed = parse_verdict(text)
    assert parsed is not None and parsed.choice == choice


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "Both answers have their merits.",
        "Assistant A is better at style, but assistant B is better on facts.",
        '{"winner": "the first one with caveats"}',
        "[[D]]",
        "The verdict",
        "My final verdict is a clear win for the second.",
    ],
)
def test_unreadable_verdicts_are_none_not_a_tie(text: str) -> None:
    assert parse_verdict(text) is None


def test_the_rationale_is_kept_without_the_verdict_token() -> None:
    parsed = parse_verdict("Assistant A is correct; B miscounts.\n\n[[A]]")
    assert parsed is not None and parsed.rationale == "Assistant A is correct; B miscounts."
    parsed = parse_verdict('{"winner": "B", "rationale": "B is right."}')
    assert parsed is not None and parsed.rationale == "B is right."
    parsed = parse_verdict("**[[B]]**\n\nAssistant B is right.")
    assert parsed is not None and parsed.rationale == "Assistant B is right."


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ("Helpful and correct.\nRating: [[8]]", 8.0),
        ("Rating: [[7.5]]", 7.5),
        ('{"rating": 6, "rationale": "ok"}', 6.0),
        ('{"score": 4, "scale": 5}', 7.75),
        ("9/10 - excellent", 9.0),
        ("4/5", 7.75),
        ("8 out of 10", 8.0),
        ("Score: 3", 3.0),
        ("5\nAverage.", 5.0),
        ("评分：[[7]]", 7.0),
        ("我给 6 分。", 6.0),
        ("The answer is decent. Rating: [[6", 6.0),
        ("0/10", 1.0),
    ],
)
def test_ratings_in_the_formats_judges_write(text: str, score: float) -> None:
    parsed = parse_rating(text)
    assert parsed is not None and parsed.score == pytest.approx(score)


@pytest.mark.parametrize(
    "text", ["", "A solid answer.", "Rating: [[12]]", "Score: 42", "11/10", '{"rating": "high"}']
)
def test_unreadable_or_off_scale_ratings_are_none(text: str) -> None:
    assert parse_rating(text) is None


PIECES = [*'AaBbCc[]{}":/ 0123456789.-*\n', "tie", "verdict", "score", "rating", "out of", "评分", "分"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=30).map("".join))
def test_parsers_never_raise_and_stay_on_their_scales(text: str) -> None:
    verdict = parse_verdict(text)
    assert verdict is None or verdict.choice in ("A", "B", "tie")
    rating = parse_rating(text)
    assert rating is None or 1.0 <= rating.score <= 10.0


def test_fake_judge_formats_all_parse_through_http(fake: FakeTeacher) -> None:
    prompts = [
        EvalPrompt(id=f"q{i}", text=f"Explain topic {i}.", answers={"tuned": "x" * (i + 1), "base": "yy" * i})
        for i in range(40)
    ]
    summary, verdicts = pairwise(fake, prompts)
    assert summary.unparseable == 0 and summary.decided == 40
    assert all(v.ab.attempts == 1 and v.ba.attempts == 1 for v in verdicts)
    styles = {v.ab.raw.split("\n")[0][:6] for v in verdicts} | {v.ba.raw.split("\n")[0][:6] for v in verdicts}
    assert len(styles) >= 3  # the fake varied its formats; each was read


# --- unparseable verdicts and teacher errors ------------------------------------------------------


def test_an_unparseable_verdict_is_retried_once_then_recorded_and_counted(fake: FakeTeacher) -> None:
    fake.set_judge("reference")
    prompts = reference_set(8, matched=8)
    prompts[3] = prompts[3].model_copy(update={"text": "GARBLE: " + prompts[3].text})
    fake.script_response("GARBLE", "Both answers have their merits.", times=None)
    summary, verdicts = pairwise(fake, prompts)
    (bad,) = [v for v in verdicts if v.status != "decided"]
    assert bad.prompt_id == "p3" and bad.status == "unparseable" and bad.outcome is None
    assert bad.ab.status == bad.ba.status == "unparseable"
    assert bad.ab.attempts == bad.ba.attempts == 2 and bad.ab.choice is None
    assert "Both answers have their merits." in bad.ab.raw
    assert (summary.decided, summary.unparseable) == (7, 1)
    rate = overall(prompts, verdicts)
    assert (rate.n, rate.unparseable, rate.wins, rate.ties) == (7, 1, 7, 0)
    assert rate.win_rate == 1.0  # the unreadable comparison is out of the rate, not a tie in it


def test_a_retry_can_recover_the_verdict(fake: FakeTeacher) -> None:
    fake.set_judge("reference")
    prompts = reference_set(1, matched=1)
    # the first answer in each order is unreadable; each order's retry then sees the fake's own verdict
    fake.script_response("[The Start of Assistant A's Answer]\n0 + 0 = 0.", "Hmm.", times=1)
    fake.script_response("[The Start of Assistant A's Answer]\nLet me think", "Hmm.", times=1)
    _, (verdict,) = pairwise(fake, prompts)
    assert verdict.status == "decided" and verdict.outcome == "a"
    assert verdict.ab.attempts == verdict.ba.attempts == 2


def test_a_teacher_error_is_counted_apart_and_judged_again_on_resume(fake: FakeTeacher) -> None:
    fake.set_judge("reference")
    prompts = reference_set(1, matched=1)
    fake.fault(400, count=1)
    summary, verdicts = pairwise(fake, prompts)
    assert summary.teacher_errors == 1 and verdicts[0].status == "teacher_error"
    assert verdicts[0].outcome is None
    summary, again = pairwise(fake, prompts, done=verdicts)
    assert summary.skipped == 0 and again[0].status == "decided"


# --- running: order, batches, stop, budget ---------------------------------------------------------


def test_verdicts_are_emitted_in_plan_order_in_batches_of_the_window(fake: FakeTeacher) -> None:
    fake.set_judge("reference")
    prompts = reference_set(25, matched=20)
    batches: list[int] = []
    summary, verdicts = pairwise(fake, prompts, params=PairwiseParams(batch_size=10), batches=batches)
    assert [v.prompt_id for v in verdicts] == [p.id for p in prompts]
    assert batches == [10, 10, 5] and summary.judged == 25


def test_a_stop_request_ends_the_run_after_what_is_in_flight(fake: FakeTeacher) -> None:
    fake.set_judge("reference")
    prompts = reference_set(25, matched=25)
    polls: list[int] = []

    def stop_on_second_poll() -> bool:
        polls.append(1)
        return len(polls) >= 2

    summary, verdicts = pairwise(
        fake, prompts, params=PairwiseParams(batch_size=10), should_stop=stop_on_second_poll
    )
    assert summary.stop_reason == "stopped"
    # the first window ran to its end and was emitted in order; nothing more was started
    assert [v.prompt_id for v in verdicts] == [p.id for p in prompts[: len(verdicts)]]
    assert 10 <= len(verdicts) < 25 and summary.judged == len(verdicts)
    assert fake.stats()["completions"] == 2 * len(verdicts)


def test_an_exhausted_budget_stops_the_run_and_keeps_the_finished_prefix(fake: FakeTeacher) -> None:
    fake.set_judge("reference")
    prompts = reference_set(25, matched=25)
    # ~$0.33 a call: a window of 4 comparisons (8 calls) fits in $6, the whole set does not
    summary, verdicts = pairwise(fake, prompts, params=PairwiseParams(batch_size=4), budget_usd=6.0)
    assert summary.stop_reason == "budget" and "budget" in summary.message
    assert 0 < summary.judged == len(verdicts) < 25
    assert [v.prompt_id for v in verdicts] == [p.id for p in prompts[: len(verdicts)]]


# --- resume and storage ---------------------------------------------------------------------------


def test_stored_verdicts_round_trip_through_json_and_are_not_judged_again(fake: FakeTeacher) -> None:
    fake.set_judge("reference")
    prompts = reference_set(6, matched=3)
    _, first = pairwise(fake, prompts[:4])
    stored = [json.loads(json.dumps(v.model_dump(mode="json"))) for v in first]
    restored = [PairVerdict.model_validate(s) for s in stored]
    assert restored == first
    fake.reset()
    fake.set_judge("reference")
    summary, rest = pairwise(fake, prompts, done=restored)
    assert (summary.total, summary.skipped, summary.judged) == (6, 4, 2)
    assert [v.prompt_id for v in rest] == ["p4", "p5"]
    assert fake.stats()["completions"] == 4
    assert overall(prompts, restored + rest) == overall(prompts, first + rest)


def test_a_verdict_stored_for_the_reversed_pair_counts_as_done_and_is_summarised_flipped(
    fake: FakeTeacher,
) -> None:
    fake.set_judge("reference")
    prompts = reference_set(4, matched=4)
    _, reversed_ = pairwise(fake, prompts, pairs=[("base", "tuned")])
    summary, _ = pairwise(fake, prompts, pairs=[("tuned", "base")], done=reversed_)
    assert summary.skipped == 4 and summary.judged == 0
    flipped = [v.flipped() for v in reversed_]
    assert all(v.system_a == "tuned" and v.outcome == "a" for v in flipped)
    rate = overall(prompts, flipped + reversed_)  # one verdict per prompt, the last given, oriented
    assert (rate.system_a, rate.n) == ("tuned", 4)


# --- results --------------------------------------------------------------------------------------


def test_three_systems_give_three_pairs_and_per_category_rates(fake: FakeTeacher) -> None:
    fake.set_judge("reference")
    prompts = []
    for i in range(20):
        category = "math" if i % 2 else "writing"
        reference = f"Reference {i}."
        # tuned knows the math answers only; teacher knows all of them; base none
        tuned = reference if category == "math" else f"Guess {i}."
        prompts.append(
            EvalPrompt(
                id=f"c{i}",
                text=f"Task {i}",
                category=category,
                reference=reference,
                answers={"tuned": tuned, "base": f"No idea {i}.", "teacher": reference},
            )
        )
    pairs = all_pairs(["tuned", "base", "teacher", "base"])
    assert pairs == [("tuned", "base"), ("tuned", "teacher"), ("base", "teacher")]
    _, verdicts = pairwise(fake, prompts, pairs=pairs)
    rates = {(r.system_a, r.system_b, r.category): r for r in summarise_pairwise(prompts, verdicts).win_rates}
    assert len(rates) == 9
    assert rates[("tuned", "base", "math")].win_rate == 1.0
    assert rates[("tuned", "base", "writing")].win_rate == 0.5
    assert rates[("tuned", "base", None)].win_rate == 0.75
    assert rates[("tuned", "teacher", "math")].win_rate == 0.5
    assert rates[("base", "teacher", None)].win_rate == 0.0
    assert rates[("tuned", "base", "math")].n == 10


def test_a_verdict_for_an_answer_not_among_the_prompts_is_refused_by_name(fake: FakeTeacher) -> None:
    prompts = reference_set(3, matched=3)
    _, verdicts = pairwise(fake, prompts)
    with pytest.raises(ValueError, match="'p2' compares 'tuned'"):
        summarise_pairwise(prompts[:2], verdicts)


def test_answer_lengths_are_reported_per_system_and_category() -> None:
    prompts = [
        EvalPrompt(id="1", text="q", category="x", answers={"s": "abcd" * 10, "t": "光合作用"}),
        EvalPrompt(id="2", text="q", category="y", answers={"s": "abcd" * 30, "t": "光合作用光合作用"}),
    ]
    report = summarise_pairwise(prompts, [])
    lengths = {(s.system, s.category): s for s in report.lengths}
    assert lengths[("s", None)].mean_chars == 80 and lengths[("s", None)].median_chars == 80
    assert lengths[("s", "x")].mean_tokens == 11  # 40 ASCII characters: ~4 per token (+1)
    assert lengths[("t", None)].mean_tokens == 7  # CJK: one token per character (+1)
    assert report.win_rates == []


def test_bootstrap_interval_is_deterministic_for_a_seed() -> None:
    values = [(i * 0.618) % 1 for i in range(25)]  # distinct values: another seed moves the percentiles
    assert bootstrap_interval(values, seed=7) == bootstrap_interval(values, seed=7)
    assert bootstrap_interval(values, seed=7) != bootstrap_interval(values, seed=8)
    assert bootstrap_interval([], seed=7) is None
    assert bootstrap_interval([1.0, 1.0, 1.0]) == (1.0, 1.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([0.0, 0.5, 1.0]), min_size=1, max_size=80), st.integers(0, 2**31))
def test_bootstrap_interval_contains_the_point_estimate(values: list[float], seed: int) -> None:
    interval = bootstrap_interval(values, seed=seed, resamples=400)
    assert interval is not None
    low, high = interval
    assert 0.0 <= low <= sum(values) / len(values) <= high <= 1.0


def test_more_prompts_give_a_narrower_interval() -> None:
    few = bootstrap_interval([1.0, 0.0] * 10, seed=1)
    many = bootstrap_interval([1.0, 0.0] * 200, seed=1)
    assert few is not None and many is not None
    assert many[1] - many[0] < (few[1] - few[0]) / 3


def test_summaries_do_not_depend_on_what_else_was_summarised(fake: FakeTeacher) -> None:
    fake.set_judge("reference")
    prompts = reference_set(12, matched=7)
    _, verdicts = pairwise(fake, prompts)
    alone = overall(prompts, verdicts)
    report = summarise_pairwise(prompts, list(reversed(verdicts)))
    assert [r for r in report.win_rates if r.category is None] == [alone]


# --- length control -------------------------------------------------------------------------------


def verbose_set(n: int, *, verbose_longer: int) -> list[EvalPrompt]:
    """``verbose`` writes the longer answer on the first ``verbose_longer`` prompts, ``terse`` on the rest."""
    prompts = []
    for i in range(n):
        long, short = f"Answer {i}. " + "More words to say here. " * (3 + i % 5), f"Answer {i}, short."
        verbose, terse = (long, short) if i < verbose_longer else (short, long)
        prompts.append(
            EvalPrompt(id=f"v{i}", text=f"Topic {i}?", answers={"verbose": verbose, "terse": terse})
        )
    return prompts


def test_length_controlled_rate_moves_toward_one_half_when_the_winner_is_just_longer(
    fake: FakeTeacher,
) -> None:
    fake.set_judge("longer")
    prompts = verbose_set(40, verbose_longer=30)
    _, verdicts = pairwise(fake, prompts, pairs=[("verbose", "terse")])
    rate = overall(prompts, verdicts)
    assert (rate.wins, rate.losses) == (30, 10) and rate.win_rate == 0.75
    assert rate.lc_win_rate is not None and rate.length_coef is not None
    assert abs(rate.lc_win_rate - 0.5) < abs(rate.win_rate - 0.5) - 0.05
    assert rate.length_coef > 1  # the judge's taste for length is visible in the fit
    assert rate.mean_tokens_a is not None and rate.mean_tokens_b is not None
    assert rate.mean_tokens_a > rate.mean_tokens_b


def test_length_control_leaves_a_win_that_length_does_not_explain(fake: FakeTeacher) -> None:
    fake.set_judge("reference")
    ties = {3, 8, 14, 21, 26, 29}  # as many with a short base answer (even) as with a long one (odd)
    prompts = []
    for i in range(30):
        reference = f"{i} + {i} = {2 * i}."
        tuned = reference if i not in ties else f"{i} + {i} = {2 * i + 2}."
        base = "No." if i % 2 == 0 else "Let me think about this sum for a while. " * 3
        prompts.append(
            EvalPrompt(
                id=f"p{i:02}", text=f"{i} + {i}?", reference=reference, answers={"tuned": tuned, "base": base}
            )
        )
    _, verdicts = pairwise(fake, prompts)
    rate = overall(prompts, verdicts)
    assert (rate.wins, rate.ties, rate.win_rate, rate.share_a_longer) == (24, 6, 0.9, 0.5)
    assert rate.lc_win_rate is not None and rate.lc_ci_low is not None and rate.length_coef is not None
    assert abs(rate.length_coef) < 0.2
    assert rate.lc_win_rate == pytest.approx(rate.win_rate, abs=0.02) and rate.lc_ci_low > 0.5


def test_when_one_system_is_always_shorter_length_control_extrapolates_and_says_so(fake: FakeTeacher) -> None:
    fake.set_judge("reference")
    prompts = reference_set(30, matched=24)  # tuned's answers are all shorter than base's
    _, verdicts = pairwise(fake, prompts)
    rate = overall(prompts, verdicts)
    assert rate.share_a_longer == 0.0
    assert rate.lc_ci_low is not None and rate.lc_ci_high is not None
    assert rate.ci_low is not None and rate.ci_high is not None
    assert rate.lc_ci_high - rate.lc_ci_low > rate.ci_high - rate.ci_low  # less certain than the raw rate


def test_with_equal_lengths_the_length_controlled_rate_is_the_win_rate() -> None:
    outcomes = [1.0] * 12 + [0.5] * 4 + [0.0] * 4
    lc = length_controlled_win_rate(outcomes, [50] * 20, [50] * 20)
    assert lc is not None
    assert lc.win_rate == pytest.approx(0.7, abs=0.005) and lc.coef == 0.0
    assert length_controlled_win_rate([], [], []) is None


def test_length_control_is_symmetric_in_the_two_systems() -> None:
    outcomes = [1.0, 1.0, 0.0, 0.5, 1.0, 0.0, 1.0, 1.0]
    ta = [120, 80, 30, 60, 200, 40, 90, 70]
    tb = [40, 60, 90, 60, 50, 100, 100, 30]
    lc = length_controlled_win_rate(outcomes, ta, tb)
    mirrored = length_controlled_win_rate([1 - o for o in outcomes], tb, ta)
    assert lc is not None and mirrored is not None
    assert lc.win_rate + mirrored.win_rate == pytest.approx(1.0, abs=1e-6)
    assert lc.coef == pytest.approx(mirrored.coef, abs=1e-6)


# --- single-answer scores -------------------------------------------------------------------------


def test_single_scores_follow_the_reference_and_unreadable_ones_are_counted(fake: FakeTeacher) -> None:
    fake.set_judge("reference")
    prompts = reference_set(10, matched=10)
    prompts[0] = prompts[0].model_copy(update={"text": "SCRAMBLE " + prompts[0].text})
    fake.script_response("SCRAMBLE", "An interesting answer.", times=None)
    verdicts: list[ScoreVerdict] = []

    async def main() -> RunSummary:
        async with Gateway(teacher_for(fake)) as gateway:
            return await run_scoring(
                gateway=gateway,
                prompts=prompts,
                systems=["tuned", "base"],
                params=ScoreParams(),
                emit=verdicts.extend,
            )

    summary = asyncio.run(main())
    assert (summary.total, summary.decided, summary.unparseable) == (20, 18, 2)
    stats = {s.system: s for s in summarise_scores(verdicts) if s.category is None}
    assert stats["tuned"].mean == 9.0 and stats["base"].mean == 2.0
    assert stats["tuned"].n == 9 and stats["tuned"].unparseable == 1
    assert all(v.attempts == 2 for v in verdicts if v.status == "unparseable")


# --- the layering rule ----------------------------------------------------------------------------


def test_the_pairwise_module_imports_neither_sqlalchemy_nor_fastapi_nor_torch() -> None:
    loaded = _modules_after("import app.pipeline.pairwise")
    assert not {"sqlalchemy", "fastapi", "torch"} & loaded
