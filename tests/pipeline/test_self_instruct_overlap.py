"""Self-Instruct keeps the teacher busy across round boundaries without changing what it keeps.

The order rule (``run_self_instruct``'s docstring, docs/generation.md) makes the kept set a function of the
seed and the teacher's answers, not of timing: these tests run the real pipeline against the fake teacher,
counting the requests it has in flight as each one arrives (at the HTTP boundary, not with a clock).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from app.pipeline.llm import Gateway, InMemoryCache, ResponseCache
from app.pipeline.self_instruct import (
    ROUND_STRIDE,
    GenEvent,
    GenRecord,
    SeedTask,
    SelfInstructParams,
    SelfInstructResult,
    _Yield,
    load_seed_tasks,
    run_self_instruct,
)
from tests.fake_teacher import FakeState, FakeTeacher, build_app, teacher_for

SEEDS_FILE = Path(__file__).resolve().parents[3] / "shared" / "data" / "self-instruct" / "seed_tasks.jsonl"


class InFlight:
    """ASGI middleware in front of the fake teacher: how many completions are in flight as each arrives.

    With ``spread_ms``, each request is answered up to that much later than the teacher's latency (a
    seeded draw per request), as a real teacher's answers come back spread out rather than in lockstep.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.spread_ms = 0.0
        self.now = 0
        self.at_arrival: list[int] = []
        self._delays = random.Random(0)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        counted = scope["type"] == "http" and scope["path"].endswith("completions")
        if counted:
            self.now += 1
            self.at_arrival.append(self.now)
        try:
            if counted and self.spread_ms:
                await asyncio.sleep(self._delays.random() * self.spread_ms / 1000)
            await self.app(scope, receive, send)
        finally:
            if counted:
                self.now -= 1

    def reset(self) -> None:
        self.now, self.at_arrival, self.spread_ms = 0, [], 0.0
        self._delays = random.Random(0)


@contextlib.contextmanager
def counting_teacher(latency_ms: float, spread_ms: float = 0.0) -> Iterator[tuple[FakeTeacher, InFlight]]:
    state = FakeState(latency_ms=latency_ms)
    app = InFlight(build_app(state))
    app.spread_ms = spread_ms
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "fake teacher did not start"
        time.sleep(0.01)
    try:
        yield FakeTeacher(state, sock.getsockname()[1]), app
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def counted() -> Iterator[tuple[FakeTeacher, InFlight]]:
    with counting_teacher(latency_ms=0) as pair:
        yield pair


@pytest.fixture
def fake(counted: tuple[FakeTeacher, InFlight]) -> FakeTeacher:
    teacher, inflight = counted
    teacher.reset()
    teacher.set_latency(0)
    inflight.reset()
    return teacher


@pytest.fixture(scope="module")
def seeds() -> list[SeedTask]:
    return load_seed_tasks(SEEDS_FILE)


def generate(
    fake: FakeTeacher,
    seeds: list[SeedTask],
    params: SelfInstructParams,
    *,
    concurrency: int,
    cache: ResponseCache | None = None,
    run: Any = run_self_instruct,
) -> tuple[SelfInstructResult, list[GenRecord], Gateway]:
    events: list[GenEvent] = []

    async def main() -> tuple[SelfInstructResult, Gateway]:
        async with Gateway(teacher_for(fake, max_concurrency=concurrency), cache=cache) as gateway:
            result = await run(gateway=gateway, seeds=seeds, params=params, emit=events.append)
            return result, gateway

    result, gateway = asyncio.run(main())
    return result, [r for e in events for r in e.records], gateway


def test_kept_set_is_the_same_at_concurrency_1_and_32(fake: FakeTeacher, seeds: list[SeedTask]) -> None:
    """Same seed, same answers: identical records (keys, decisions, order) whatever the concurrency."""
    params = SelfInstructParams(target=45, batch_size=2, seed=11)
    one, records_1, _ = generate(fake, seeds, params, concurrency=1)
    many, records_32, _ = generate(fake, seeds, params, concurrency=32)
    assert one.stop_reason == many.stop_reason == "target"
    assert one.rounds == many.rounds and one.rounds > 3, "several rounds, some of them overlapped"
    assert records_1 == records_32
    assert one == many


def test_target_is_exact_and_no_paid_answer_is_lost(fake: FakeTeacher, seeds: list[SeedTask]) -> None:
    cache = InMemoryCache()
    params = SelfInstructParams(target=37, batch_size=5, seed=5)
    result, records, gateway = generate(fake, seeds, params, concurrency=32, cache=cache)
    kept_tasks = {r.instruction for r in records if r.status == "kept"}
    assert result.stop_reason == "target" and result.kept_tasks == len(kept_tasks) == 37
    # No task failed, so the last round screened no spare past the target.
    assert result.surplus_tasks == 0
    stats = fake.stats()
    # Every answer the teacher completed was received, costed and cached: none was cut off at the end.
    assert stats["completions"] == stats["requests"] == gateway.usage.calls
    assert max(stats["completed_by_hash"].values()) == 1
    # A later run with a higher target replays all of it from the cache and pays only for what is new.
    fake.reset()
    more = SelfInstructParams(target=40, batch_size=5, seed=5)
    bigger, _, again = generate(fake, seeds, more, concurrency=32, cache=cache)
    assert bigger.kept_tasks == 40
    assert again.usage.cached_calls >= gateway.usage.calls - 2  # the old run's last round may differ
    assert fake.stats()["requests"] < gateway.usage.calls // 2


def test_calls_in_flight_stay_near_the_concurrency_across_round_boundaries(
    counted: tuple[FakeTeacher, InFlight], seeds: list[SeedTask]
) -> None:
    """Round r+1 is screened while round r's tasks finish: at every arrival between the first round's
    ramp-up and the last round's tail, nearly half the slots are busy (the round-by-round pipeline
    fell to 1 at each boundary here: its next round's first requests found the teacher idle)."""
    teacher, inflight = counted
    teacher.reset()
    inflight.reset()
    concurrency = 8
    teacher.set_latency(100)
    inflight.spread_ms = 200
    try:
        params = SelfInstructParams(target=70, batch_size=4, seed=3)
        result, _, gateway = generate(teacher, seeds, params, concurrency=concurrency)
        seen = list(inflight.at_arrival)
    finally:
        teacher.set_latency(0)
        inflight.reset()
    assert result.stop_reason == "target" and result.rounds >= 3
    assert len(seen) == gateway.usage.calls
    assert max(seen) == concurrency
    body = seen[2 * concurrency : len(seen) - 2 * concurrency]
    # 3 of 8, not 4: the spare-task rule (calls only for a task before them that failed) leaves this at
    # exactly 4 on a quiet machine, and a loaded one shifts arrivals by a slot; the pipeline this guards
    # against fell to 1 at every boundary.
    floor = concurrency // 2 - 1
    low = [(i, n) for i, n in enumerate(seen) if n < floor]
    assert min(body) >= floor, (low, len(seen))


def test_spares_are_screened_and_paid_for_only_when_a_task_gets_no_instance(
    fake: FakeTeacher, seeds: list[SeedTask]
) -> None:
    """A round screens candidates up to what the target still needs, and one spare more for each of its
    tasks that gets no instance (up to its slack): a spare is never screened, asked prompts for, or paid for
    unless used (a 400-task job made 38 calls for 19 spares it never used, then screened 6 prompts' worth of
    them). The records do not depend on when the failures arrive: the same at concurrency 1 and 32."""
    params = SelfInstructParams(target=40, batch_size=6, seed=5)

    def run(concurrency: int) -> tuple[SelfInstructResult, list[GenRecord], list[str]]:
        fake.reset()
        fake.script_response("Task: Write", "")  # no instance for the tasks that start with "Write"
        purposes: list[str] = []
        events: list[GenEvent] = []

        async def main() -> SelfInstructResult:
            teacher = teacher_for(fake, max_concurrency=concurrency)
            async with Gateway(teacher, on_call=lambda call: purposes.append(call.purpose)) as gateway:
                return await run_self_instruct(
                    gateway=gateway, seeds=seeds, params=params, emit=events.append
                )

        result = asyncio.run(main())
        return result, [r for e in events for r in e.records], purposes

    result, records, purposes = run(32)

    # A task's records: its instances (si:round:prompt:item:n), or one record when it got none.
    def task(key: str) -> str:
        return ":".join(key.split(":")[:4])

    task_keys = {
        task(r.key) for r in records if r.key.count(":") == 4 or r.reason in ("no_instances", "teacher_error")
    }
    failed = task_keys - {task(r.key) for r in records if r.status == "kept"}
    assert result.stop_reason == "target" and result.kept_tasks == 40
    assert failed and len(task_keys) == 40 + len(failed), "tasks failed, and each one's spare was used"
    assert result.surplus_tasks == 0
    # Every task paid for is one of the round's records: no spare was started and left unused.
    assert (
        purposes.count("self_instruct.classify")
        == purposes.count("self_instruct.instances")
        == len(task_keys)
    )
    one, records_1, _ = run(1)
    assert records_1 == records and one == result


def test_prompts_sent_ahead_change_what_is_sent_never_what_is_kept(
    fake: FakeTeacher, seeds: list[SeedTask], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round's instruction prompts go out as its screening needs them (at the yield so far, topped up
    when the answers fall short), not all at once. The last round here needs a small part of its batch:
    it sends fewer prompts than every prompt up front (the previous pipeline) and at least as many as one
    prompt at a time (a round trip each), which sends exactly the prompts whose items reach the target; all
    three keep the same records under the same keys. Prompts are counted by round as the gateway builds
    their requests."""
    params = SelfInstructParams(target=220, batch_size=16, seed=7)

    def run() -> tuple[SelfInstructResult, list[GenRecord], Counter[int]]:
        fake.reset()
        sent: Counter[int] = Counter()

        async def main() -> tuple[SelfInstructResult, list[GenRecord]]:
            events: list[GenEvent] = []
            async with Gateway(teacher_for(fake, max_concurrency=32)) as gateway:
                build = gateway.build_request

                def counting(*args: Any, **kwargs: Any) -> dict[str, Any]:
                    request = build(*args, **kwargs)
                    if kwargs["sampling"].max_tokens == params.sampling.max_tokens:  # an instruction prompt
                        sent[request["sample_index"] // ROUND_STRIDE] += 1
                    return request

                gateway.build_request = counting  # type: ignore[method-assign]
                result = await run_self_instruct(
                    gateway=gateway, seeds=seeds, params=params, emit=events.append
                )
            return result, [r for e in events for r in e.records]

        result, records = asyncio.run(main())
        return result, records, sent

    default, records, sent = run()
    monkeypatch.setattr(_Yield, "prompts_for", lambda self, candidates: params.batch_size)
    eager, eager_records, eager_sent = run()
    monkeypatch.setattr(_Yield, "prompts_for", lambda self, candidates: 0)
    lazy, lazy_records, lazy_sent = run()

    assert default.stop_reason == "target" and default.kept_tasks == 220 and default.rounds >= 2
    assert records == eager_records == lazy_records
    assert default == eager == lazy
    last = default.rounds - 1
    assert eager_sent[last] == params.batch_size, "the previous pipeline sent every prompt of the last round"
    # One at a time, the last round sends exactly the prompts up to the one with the target's last task
    # (no task failed: no spare is screened); ahead of screening it sends a prompt or two more (the yield
    # is an estimate, and a margin spares a round trip), far fewer than the whole batch.
    used = 1 + max(int(r.key.split(":")[2]) for r in records if r.round == last)
    assert lazy_sent[last] == used
    assert used <= sent[last] <= used + 2 < params.batch_size, (sent, used)
    assert sum(lazy_sent.values()) <= sum(sent.values()) < sum(eager_sent.values())
