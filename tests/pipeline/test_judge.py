"""The LLM judge: score parsing, retry then unscored, threshold, agreement with humans."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from app.pipeline.judge import (
    JudgeItem,
    JudgeParams,
    JudgeResult,
    JudgeSummary,
    agreement,
    parse_score,
    run_judge,
)
from app.pipeline.llm import Gateway
from tests.fake_teacher import FakeTeacher, teacher_for


@pytest.fixture(scope="module")
def server() -> Iterator[FakeTeacher]:
    with FakeTeacher.start() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeTeacher) -> FakeTeacher:
    server.reset()
    return server


def judge(
    fake: FakeTeacher, items: list[JudgeItem], params: JudgeParams | None = None
) -> tuple[JudgeSummary, list[JudgeResult]]:
    results: list[JudgeResult] = []

    async def main() -> JudgeSummary:
        async with Gateway(teacher_for(fake)) as gateway:
            return await run_judge(
                gateway=gateway, items=items, params=params or JudgeParams(), emit=results.extend
            )

    return asyncio.run(main()), results


ITEM = JudgeItem("r1", "Name the capital of France.", "", "Paris.")


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ('{"score": 4, "rationale": "Accurate."}', 4.0),
        ('```json\n{"score": "5", "rationale": "ok"}\n```', 5.0),
        ("Score: 4\nThe answer is correct.", 4.0),
        ("**Score**: 2\n\nMostly wrong.", 2.0),
        ("4/5 - concise and right", 4.0),
        ("I would rate this 7.5/10.", 1 + 6.5 * 4 / 9),
        ("10/10", 5.0),
        ("3 out of 5", 3.0),
        ("5\nExcellent answer.", 5.0),
        ("评分：4分", 4.0),
    ],
)
def test_scores_in_the_formats_judges_write(text: str, score: float) -> None:
    parsed = parse_score(text)
    assert parsed is not None and parsed.score == pytest.approx(score)


@pytest.mark.parametrize(
    "text", ["", "The answer is fine overall.", "12/5", '{"score": "great"}', "Score: 42"]
)
def test_unreadable_scores_are_none_not_a_guess(text: str) -> None:
    assert parse_score(text) is None


def test_json_rationale_is_kept() -> None:
    parsed = parse_score('{"score": 3, "rationale": "Partly correct."}')
    assert parsed is not None and parsed.rationale == "Partly correct."


def test_unparseable_answer_is_retried_once_then_unscored(fake: FakeTeacher) -> None:
    fake.script_response("Score the response", "What a lovely answer!")
    fake.script_response("could not be read", "Still lovely.")
    summary, results = judge(fake, [ITEM])
    (result,) = results
    assert result.score is None and result.status == "unscored" and result.reason == "judge_unparseable"
    assert result.attempts == 2
    assert fake.stats()["completions"] == 2
    assert summary.unscored == 1 and summary.mean_score is None


def test_retry_can_recover_a_score(fake: FakeTeacher) -> None:
    fake.script_response("could not be read", '{"score": 5, "rationale": "Correct."}')
    fake.script_response("Score the response", "Hmm, nice.")
    _, (result,) = judge(fake, [ITEM])
    assert result.score == 5.0 and result.status == "kept" and result.attempts == 2


def test_threshold_keeps_only_high_scores(fake: FakeTeacher) -> None:
    fake.script_response("Paris.", "Score: 4")
    fake.script_response("Lyon.", "Score: 5")
    items = [ITEM, JudgeItem("r2", "Name the third largest city of France.", "", "Lyon.")]
    summary, results = judge(fake, items)
    by_key = {r.key: r for r in results}
    assert by_key["r1"].status == "rejected" and by_key["r1"].reason == "judge_below"
    assert by_key["r2"].status == "kept"
    assert (summary.kept, summary.rejected) == (1, 1)
    _, lenient = judge(fake, items, JudgeParams(threshold=4.0))
    assert all(r.status == "kept" for r in lenient)


def test_curator_rubric_is_sent_to_the_judge(fake: FakeTeacher) -> None:
    fake.script_response("RUBRIC-MARKER-42", '{"score": 1, "rationale": "Rubric applied."}')
    _, (result,) = judge(fake, [ITEM], JudgeParams(rubric="RUBRIC-MARKER-42: only cite sources"))
    assert result.score == 1.0 and result.rationale == "Rubric applied."


def test_fake_judge_formats_mostly_parse_and_never_invent_scores(fake: FakeTeacher) -> None:
    items = [JudgeItem(f"k{n}", f"Explain topic {n}.", "", f"Answer number {n}.") for n in range(60)]
    summary, results = judge(fake, items)
    assert [r.key for r in results] == [i.key for i in items]
    assert summary.kept + summary.rejected + summary.unscored == 60
    assert 0 < summary.unscored < 30
    assert all((r.score is None) == (r.status == "unscored") for r in results)
    assert all(1 <= r.score <= 5 for r in results if r.score is not None)


def test_agreement_between_judge_and_humans() -> None:
    report = agreement([1, 2, 3, 4, 5, None, 3], [1, 2, 3, 5, 4, 2, None])
    assert report["n"] == 5
    assert report["spearman"] == pytest.approx(0.9)
    assert report["pearson"] == pytest.approx(0.9)
    assert report["exact"] == pytest.approx(0.6)
    assert report["within_1"] == pytest.approx(1.0)
    perfect = agreement([4.5, 2.0, 3.0], [5, 2, 3])
    assert perfect["spearman"] == pytest.approx(1.0)
    assert agreement([3, 3], [1, 5])["pearson"] is None
    with pytest.raises(ValueError):
        agreement([1], [1, 2])
