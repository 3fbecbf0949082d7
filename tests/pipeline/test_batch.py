"""Batch mode (app/pipeline/llm/batch.py) against the fake teacher's Batch API, through the real openai
client: answers match the synchronous endpoint's, cost is at batch prices, failed and expired requests go
into a new batch, and a submission interrupted after the batch was created is never made twice."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from app.pipeline.judge import JudgeItem, JudgeParams, JudgeResult, run_judge
from app.pipeline.llm import CallRecord, Gateway, InMemoryCache, run_coroutine
from app.pipeline.llm.batch import BatchGateway, BatchRunner, BatchState, collect_missing
from tests.fake_teacher import FakeTeacher, teacher_for


class LedgerCache(InMemoryCache):
    """The job's DB cache in miniature: keeps the paid call with its answer."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[CallRecord] = []

    def put(self, key: str, request: dict[str, Any], response: dict[str, Any], call: Any = None) -> None:
        super().put(key, request, response, call)
        if call is not None:
            self.calls.append(call)


ITEMS = [
    JudgeItem(key=f"rec:{i}", instruction=f"Explain topic number {i}.", input="", output=f"Answer {i} " * 5)
    for i in range(40)
]
PARAMS = JudgeParams(threshold=4.0)


def _judge(gateway: Gateway, sink: list[JudgeResult] | None = None) -> Any:
    return run_judge(
        gateway=gateway, items=ITEMS, params=PARAMS, emit=(sink if sink is not None else []).extend
    )


def _drive(
    teacher: Any, cache: LedgerCache, state: BatchState, label: str = "test"
) -> tuple[list[JudgeResult], int]:
    """What the job does over its visits, in one process: collect, step, wait; then the final run."""
    saved: list[dict[str, Any]] = []
    runner = BatchRunner(
        teacher, job_label=label, cache=cache, save=lambda s: saved.append(s.to_json()), state=state
    )
    visits = 0
    try:
        while True:
            visits += 1
            assert visits < 50
            step = runner.step(collect_missing(teacher, _judge, cache=cache))
            if step.action == "wait":
                time.sleep(step.seconds)
            elif step.action == "final":
                break
    finally:
        runner.close()
    results: list[JudgeResult] = []

    async def final() -> None:
        async with BatchGateway(teacher, mode="final", failed=step.failed, cache=cache) as gateway:
            await _judge(gateway, results)

    run_coroutine(final())
    return results, visits


def _sync_results(fake: FakeTeacher) -> list[JudgeResult]:
    results: list[JudgeResult] = []

    async def go() -> None:
        async with Gateway(teacher_for(fake), cache=InMemoryCache()) as gateway:
            await _judge(gateway, results)

    run_coroutine(go())
    return results


def _custom_ids(fake: FakeTeacher, file_id: str) -> set[str]:
    return {json.loads(line)["custom_id"] for line in fake.state.files[file_id].decode().splitlines()}


@pytest.fixture
def fake() -> Any:
    with FakeTeacher.start() as f:
        f.set_batches(delay_s=0.3)
        yield f


def _teacher(fake: FakeTeacher) -> Any:
    return teacher_for(
        fake,
        batch=True,
        batch_poll_s=0.2,
        price_in_per_1k=0.002,
        price_out_per_1k=0.004,
        batch_max_attempts=2,
    )


def test_batch_judge_gives_the_synchronous_verdicts_at_half_price(fake):
    teacher, cache = _teacher(fake), LedgerCache()
    results, _ = _drive(teacher, cache, BatchState())
    assert [(r.key, r.score, r.status) for r in results] == [
        (r.key, r.score, r.status) for r in _sync_results(fake)
    ]
    # Unreadable first answers were asked again, in a second batch that depended on the first.
    assert any(r.attempts == 2 for r in results)
    assert fake.stats()["batches_created"] == 2
    assert cache.calls and all(c.purpose.endswith(".batch") for c in cache.calls)
    for c in cache.calls:
        assert c.cost_usd == pytest.approx(c.tokens_in * 0.001 / 1000 + c.tokens_out * 0.002 / 1000)


def test_failed_lines_and_an_expired_batch_are_resubmitted_and_nothing_is_lost(fake):
    fake.set_batches(fail_lines=5, expire_next=1)
    teacher, cache = _teacher(fake), LedgerCache()
    state = BatchState()
    results, _ = _drive(teacher, cache, state)
    assert [(r.key, r.score) for r in results] == [(r.key, r.score) for r in _sync_results(fake)]
    first = fake.state.batches["batch_1"]
    assert first["status"] == "expired" and first["request_counts"]["failed"] == 20 + 5
    # The expired half and the failed lines went into the next batch, with the re-asks of unreadable
    # scores among the first batch's answers; nothing answered went again.
    failed = _custom_ids(fake, first["error_file_id"])
    answered = _custom_ids(fake, first["output_file_id"])
    second = _custom_ids(fake, fake.state.batches["batch_2"]["input_file_id"])
    assert failed <= second and not answered & second
    assert len({c.key for c in cache.calls}) == len(cache.calls)  # nothing paid twice
    assert not state.failures


def test_a_request_failing_in_every_batch_ends_as_a_teacher_error_for_its_item_only(fake):
    teacher, cache = _teacher(fake), LedgerCache()
    fake.set_batches(fail_lines=1)
    state = BatchState()
    runner = BatchRunner(teacher, job_label="t", cache=cache, save=lambda s: None, state=state)
    # The first line of every batch fails.
    for _ in range(10):
        fake.set_batches(fail_lines=1)
        step = runner.step(collect_missing(teacher, _judge, cache=cache))
        if step.action == "final":
            break
        time.sleep(step.seconds)
    runner.close()
    assert step.action == "final" and len(step.failed) == 1
    assert "HTTP 500" in next(iter(step.failed.values()))
    # It went into batch_max_attempts batches, never more, and then counts as failed.
    assert fake.stats()["batches_created"] >= teacher.batch_max_attempts
    results: list[JudgeResult] = []

    async def final() -> None:
        async with BatchGateway(teacher, mode="final", failed=step.failed, cache=cache) as gateway:
            await _judge(gateway, results)

    run_coroutine(final())
    errors = [r for r in results if r.reason == "teacher_error"]
    assert len(errors) == 1 and errors[0].status == "unscored" and "HTTP 500" in errors[0].raw
    assert sum(r.score is not None for r in results) >= len(ITEMS) - 1 - 10


def test_a_submission_killed_after_the_batch_was_created_finds_it_instead_of_creating_another(fake):
    teacher, cache = _teacher(fake), LedgerCache()
    saved: list[dict[str, Any]] = []
    state = BatchState()
    runner = BatchRunner(
        teacher, job_label="job9", cache=cache, save=lambda s: saved.append(s.to_json()), state=state
    )
    missing = collect_missing(teacher, _judge, cache=cache)
    runner.step(missing)
    runner.close()
    # A worker killed right after batches.create returned: its last save has the file but no batch id.
    before_id = next(
        s for s in saved if s["submissions"][0]["file_id"] and not s["submissions"][0]["batch_id"]
    )
    restarted = BatchState.from_json(before_id)
    results, _ = _drive(teacher, cache, restarted, label="job9")
    assert fake.stats()["batches_created"] == 2  # the first batch adopted, plus the re-ask batch
    assert fake.state.batches["batch_1"]["metadata"] == {"instructforge_submission": "job9-s0"}
    assert restarted.submissions[0].batch_id == "batch_1"
    assert len(results) == len(ITEMS)


def test_a_teacher_without_batches_is_refused(fake):
    from app.pipeline.llm import TeacherError

    with pytest.raises(TeacherError, match="does not offer batches"):
        BatchRunner(
            teacher_for(fake), job_label="x", cache=InMemoryCache(), save=lambda s: None, state=BatchState()
        )


def test_a_budget_submits_only_what_it_covers_at_batch_prices_and_the_job_stops_on_budget(fake):
    teacher, cache = _teacher(fake), LedgerCache()
    state = BatchState()
    # Worst case per first call: ~100 tokens in and 256 out at batch prices (0.001, 0.002 per 1k): ~0.0006.
    runner = BatchRunner(
        teacher, job_label="b", cache=cache, save=lambda s: None, state=state, budget_left_usd=0.006
    )
    step = runner.step(collect_missing(teacher, _judge, cache=cache))
    assert step.action == "wait"
    submitted = fake.state.batches["batch_1"]["request_counts"]["total"]
    assert 0 < submitted < len(ITEMS)
    time.sleep(0.5)
    assert runner.step(collect_missing(teacher, _judge, cache=cache)).action == "collect"
    runner.budget_left_usd = 0.0  # the job's next visit: the budget is spent
    step = runner.step(collect_missing(teacher, _judge, cache=cache))
    runner.close()
    assert step.action == "final" and fake.stats()["batches_created"] == 1
    results: list[JudgeResult] = []

    async def final() -> Any:
        async with BatchGateway(teacher, mode="final", failed=step.failed, cache=cache) as gateway:
            return await _judge(gateway, results)

    summary = run_coroutine(final())
    assert summary.stop_reason == "budget" and sum(c.cost_usd for c in cache.calls) <= 0.006


def test_a_visit_reads_each_answer_from_the_jobs_cache_once_however_many_passes(fake):
    from app.pipeline.llm.batch import RememberingCache

    class Counting(LedgerCache):
        gets = 0

        def get(self, key: str) -> dict[str, Any] | None:
            Counting.gets += 1
            return super().get(key)

    teacher, inner = _teacher(fake), Counting()
    _drive(teacher, inner, BatchState())  # every answer is in the job's cache now
    cache = RememberingCache(inner)
    Counting.gets = 0
    assert collect_missing(teacher, _judge, cache=cache) == {}
    first_pass = Counting.gets
    assert collect_missing(teacher, _judge, cache=cache) == {}
    assert first_pass >= len(ITEMS) and Counting.gets == first_pass


def test_a_job_over_the_teachers_batch_limit_is_split_into_several_batches_collected_together(fake):
    # 40 first calls with at most 15 requests a batch: three batches, submitted together; the re-asks of
    # unreadable scores (fewer than 15) then go in one more.
    teacher = _teacher(fake).model_copy(update={"batch_max_requests": 15})
    cache = LedgerCache()
    results, _ = _drive(teacher, cache, BatchState())
    assert [(r.key, r.score, r.status) for r in results] == [
        (r.key, r.score, r.status) for r in _sync_results(fake)
    ]
    sizes = [b["request_counts"]["total"] for b in fake.state.batches.values()]
    assert sizes[:3] == [15, 15, 10] and all(n <= 15 for n in sizes)
    assert len({c.key for c in cache.calls}) == len(cache.calls)  # nothing paid twice


def test_the_size_limit_splits_by_input_file_bytes_too(fake):
    from app.pipeline.llm.batch import _line

    teacher = _teacher(fake)
    missing = collect_missing(teacher, _judge, cache=InMemoryCache())
    line = max(len(_line(k, p).encode()) + 1 for k, p in missing.items())
    small = teacher.model_copy(update={"batch_max_bytes": 4 * line})
    runner = BatchRunner(small, job_label="x", cache=InMemoryCache(), save=lambda s: None, state=BatchState())
    chunks = runner.chunks(missing)
    runner.close()
    assert [k for c in chunks for k in c] == list(missing)  # every request once, in order
    assert all(sum(len(_line(k, p).encode()) + 1 for k, p in c.items()) <= 4 * line for c in chunks)
    assert len(chunks) >= len(missing) // 4


def test_a_batch_cancelled_at_the_provider_before_it_ran_counts_a_failure_for_each_request_and_asks_again(
    fake,
):
    # It ends with neither an output nor an error file: what it was asked is its part of the requests.
    fake.set_batches(delay_s=30)
    teacher, cache = _teacher(fake), LedgerCache()
    state = BatchState()
    runner = BatchRunner(teacher, job_label="c", cache=cache, save=lambda s: None, state=state)
    assert runner.step(collect_missing(teacher, _judge, cache=cache)).action == "wait"
    runner.client.batches.cancel("batch_1")
    assert runner.step(collect_missing(teacher, _judge, cache=cache)).action == "collect"
    runner.close()
    asked = _custom_ids(fake, fake.state.batches["batch_1"]["input_file_id"])
    assert set(state.failures) == asked and set(state.failures.values()) == {1}
    assert "cancelled without it" in next(iter(state.last_error.values()))
    fake.set_batches(delay_s=0)
    results, _ = _drive(teacher, cache, state, label="c")
    assert len(results) == len(ITEMS) and not state.failures
    assert _custom_ids(fake, fake.state.batches["batch_2"]["input_file_id"]) == asked


def _two_stages(seen: dict[int, BaseException] | None = None) -> Any:
    """A staged pipeline in miniature (Self-Instruct's instances stage): each item's second call is built
    from its first call's answer, and :func:`end_stage` marks the end of the first stage."""
    import asyncio

    from app.pipeline.llm import TeacherError
    from app.pipeline.llm.batch import end_stage

    async def pipeline(gateway: Gateway) -> list[str | None]:
        async def first(i: int) -> str | None:
            try:
                return (await gateway.complete(f"Stage one, item {i}: name a colour.", purpose="one")).text
            except TeacherError as exc:
                if seen is not None:
                    seen[i] = exc
                return None

        words = await asyncio.gather(*(first(i) for i in range(6)))
        end_stage(gateway)

        async def second(i: int, word: str | None) -> str | None:
            try:
                prompt = f"Stage two, item {i}, after {word!r}: describe it."
                return (await gateway.complete(prompt, purpose="two")).text
            except TeacherError:
                return None

        return list(await asyncio.gather(*(second(i, w) for i, w in enumerate(words))))

    return pipeline


def _prompt(pending: Any) -> str:
    return str(pending.request["messages"][0]["content"])


def test_a_staged_pipelines_second_stage_is_collected_only_once_the_first_stages_answers_are_in(fake):
    teacher, cache = _teacher(fake), LedgerCache()
    pipeline = _two_stages()
    missing = collect_missing(teacher, pipeline, cache=cache)
    # Pending first calls are not failed ones: nothing of the second stage is asked from them.
    assert len(missing) == 6 and {p.purpose for p in missing.values()} == {"one"}
    runner = BatchRunner(teacher, job_label="st", cache=cache, save=lambda s: None, state=BatchState())
    try:
        assert runner.step(missing).action == "wait"
        time.sleep(0.5)
        assert runner.step(collect_missing(teacher, pipeline, cache=cache)).action == "collect"
    finally:
        runner.close()
    second = collect_missing(teacher, pipeline, cache=cache)
    assert len(second) == 6 and {p.purpose for p in second.values()} == {"two"}
    assert all("after None" not in _prompt(p) for p in second.values())


def test_a_request_given_up_in_batches_is_failed_not_deferred_in_the_collect_pass(fake):
    from app.pipeline.llm.batch import Deferred

    teacher, cache = _teacher(fake), LedgerCache()
    runner = BatchRunner(teacher, job_label="gu", cache=cache, save=lambda s: None, state=BatchState())
    pipeline = _two_stages()
    try:
        for _ in range(10):  # the first line of every batch fails: item 0's first call, twice
            fake.set_batches(fail_lines=1)
            step = runner.step(collect_missing(teacher, pipeline, cache=cache, failed=runner.given_up()))
            if runner.given_up():
                break
            time.sleep(step.seconds)
        given_up = runner.given_up()
        assert len(given_up) == 1 and "HTTP 500" in next(iter(given_up.values()))
        # Deferred, as it was before, the given-up call would stop the pass at the first stage: the final
        # pass would then meet second-stage calls nobody collected.
        assert set(collect_missing(teacher, pipeline, cache=cache)) == set(given_up)
        seen: dict[int, BaseException] = {}
        missing = collect_missing(teacher, _two_stages(seen), cache=cache, failed=given_up)
        assert list(seen) == [0] and not isinstance(seen[0], Deferred)
        assert len(missing) == 6 and {p.purpose for p in missing.values()} == {"two"}
        assert sum("after None" in _prompt(p) for p in missing.values()) == 1  # item 0 went on as failed
        while step.action != "final":
            step = runner.step(collect_missing(teacher, pipeline, cache=cache, failed=runner.given_up()))
            time.sleep(step.seconds)
    finally:
        runner.close()

    async def final() -> list[str | None]:
        async with BatchGateway(teacher, mode="final", failed=step.failed, cache=cache) as gateway:
            result: list[str | None] = await pipeline(gateway)
            return result

    assert all(answer is not None for answer in run_coroutine(final()))  # item 0's second call too
