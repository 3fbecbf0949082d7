"""The teacher gateway against a real HTTP server (the fake teacher) with the real openai client."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import Iterator

import pytest

from app.pipeline.llm import (
    BudgetExceeded,
    CallRecord,
    Gateway,
    InMemoryCache,
    JsonlFileCache,
    Sampling,
    TeacherError,
    TeacherUnavailable,
    estimate_cost,
    load_teachers,
    request_key,
    run_coroutine,
)
from app.pipeline.llm.limits import retry_after_seconds
from tests.fake_teacher import FakeTeacher, teacher_for


@pytest.fixture(scope="module")
def server() -> Iterator[FakeTeacher]:
    with FakeTeacher.start() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeTeacher) -> FakeTeacher:
    server.reset()
    server.set_latency(0)
    return server


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(params=["aiohttp", "httpx"])
def transport(request: pytest.FixtureRequest) -> str:
    """The two ways the openai client can send (TeacherConfig.transport): behaviour must not differ."""
    return str(request.param)


async def _complete_once(gateway: Gateway, prompt: str = "Explain tides.", **kw):
    async with gateway:
        return await gateway.complete(prompt, purpose="test", **kw)


def test_chat_completion_records_usage_and_cost(fake: FakeTeacher, transport: str) -> None:
    calls: list[CallRecord] = []
    teacher = teacher_for(fake, price_in_per_1k=1.0, price_out_per_1k=2.0, transport=transport)
    result = run(_complete_once(Gateway(teacher, on_call=calls.append)))
    assert result.text and result.finish_reason == "stop" and not result.cached
    assert result.tokens_in > 0 and result.tokens_out > 0
    assert result.cost_usd == pytest.approx(result.tokens_in / 1000 + 2 * result.tokens_out / 1000)
    assert [c.purpose for c in calls] == ["test"]
    assert calls[0].cost_usd == result.cost_usd and calls[0].error is None


def test_legacy_completions_api_is_supported(fake: FakeTeacher, transport: str) -> None:
    result = run(_complete_once(Gateway(teacher_for(fake, api="completions", transport=transport))))
    assert result.text
    assert fake.stats()["completions"] == 1


def test_retry_after_seconds_is_honoured_on_429(fake: FakeTeacher, transport: str) -> None:
    fake.fault(429, count=1, retry_after=1)
    started = time.monotonic()
    result = run(_complete_once(Gateway(teacher_for(fake, transport=transport))))
    waited = time.monotonic() - started
    assert result.text
    assert waited >= 0.95, f"retried after {waited:.2f}s, before the server's Retry-After of 1s"
    assert fake.stats()["requests"] == 2


def test_retry_after_http_date_is_honoured(fake: FakeTeacher) -> None:
    # HTTP dates have 1 s resolution: "now + 2 s" means a wait of between 1 and 2 seconds.
    fake.fault(429, count=1, retry_after=2, date=True)
    started = time.monotonic()
    run(_complete_once(Gateway(teacher_for(fake))))
    assert time.monotonic() - started >= 0.9


def test_retry_after_header_forms_are_parsed() -> None:
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    assert retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= (retry_after_seconds({"retry-after": future}) or 0) <= 30
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None


def test_server_error_then_success_is_retried(fake: FakeTeacher, transport: str) -> None:
    fake.fault(500, count=2)
    gateway = Gateway(teacher_for(fake, transport=transport))
    result = run(_complete_once(gateway))
    assert result.text
    assert gateway.usage.retries == 2 and gateway.usage.calls == 1
    assert fake.stats()["requests"] == 3


def test_timeouts_are_retried_then_reported(fake: FakeTeacher, transport: str) -> None:
    fake.set_latency(800)
    gateway = Gateway(teacher_for(fake, timeout_s=0.2, max_retries=1, transport=transport))
    with pytest.raises(TeacherError, match="APITimeoutError"):
        run(_complete_once(gateway))
    assert gateway.usage.retries == 1
    fake.set_latency(0)
    time.sleep(0.9)  # let the server finish the abandoned requests before counting
    assert fake.stats()["requests"] == 2


def test_connection_errors_are_retried(transport: str) -> None:
    teacher = teacher_for_dead_port(max_retries=2, transport=transport)
    gateway = Gateway(teacher)
    with pytest.raises(TeacherError, match="APIConnectionError"):
        run(_complete_once(gateway))
    assert gateway.usage.retries == 2


def teacher_for_dead_port(**kw):
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    fake = FakeTeacher.__new__(FakeTeacher)
    fake.base_url = f"http://127.0.0.1:{port}/v1"
    return teacher_for(fake, **kw)


def test_circuit_breaker_opens_after_consecutive_failures_and_stops_sending(fake: FakeTeacher) -> None:
    fake.fault(500, count=1000)
    gateway = Gateway(teacher_for(fake, max_retries=1, breaker_failures=2))

    async def scenario() -> str:
        async with gateway:
            with pytest.raises(TeacherError) as first:
                await gateway.complete("a", purpose="t")
            assert not isinstance(first.value, TeacherUnavailable)
            with pytest.raises(TeacherUnavailable) as second:
                await gateway.complete("b", purpose="t")
            sent = fake.stats()["requests"]
            with pytest.raises(TeacherUnavailable):
                await gateway.complete("c", purpose="t")
            assert fake.stats()["requests"] == sent, "an open circuit must not send requests"
            return str(second.value)

    message = run(scenario())
    assert "2 consecutive calls failed" in message and "resume" in message


def test_circuit_breaker_opens_when_failing_for_too_long(fake: FakeTeacher) -> None:
    fake.fault(503, count=1000)
    gateway = Gateway(teacher_for(fake, max_retries=50, breaker_failures=100, breaker_window_s=0.3))
    with pytest.raises(TeacherUnavailable, match="every attempt"):
        run(_complete_once(gateway))
    assert fake.stats()["requests"] < 50


def test_bad_credentials_make_the_teacher_unavailable(fake: FakeTeacher, transport: str) -> None:
    fake.fault(401, count=1)
    with pytest.raises(TeacherUnavailable, match="credentials"):
        run(_complete_once(Gateway(teacher_for(fake, transport=transport))))


def test_missing_api_key_variable_is_a_clear_error(
    fake: FakeTeacher, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IF_TEST_NO_SUCH_KEY", raising=False)
    with pytest.raises(TeacherUnavailable, match="IF_TEST_NO_SUCH_KEY"):
        Gateway(teacher_for(fake, api_key_env="IF_TEST_NO_SUCH_KEY"))


def test_concurrency_is_bounded_halves_on_429_and_recovers(fake: FakeTeacher) -> None:
    fake.set_latency(50)
    gateway = Gateway(teacher_for(fake, max_concurrency=8))
    peak = 0
    lowest = 8

    async def scenario() -> tuple[int, int]:
        async def watch() -> None:
            nonlocal peak, lowest
            while True:
                peak = max(peak, gateway._limit.in_flight)
                lowest = min(lowest, gateway.concurrency_limit)
                await asyncio.sleep(0.002)

        async with gateway:
            watcher = asyncio.create_task(watch())
            await asyncio.gather(*(gateway.complete(f"p{i}", purpose="t") for i in range(24)))
            assert peak <= 8
            fake.fault(429, count=8, retry_after=0)
            await asyncio.gather(*(gateway.complete(f"q{i}", purpose="t") for i in range(8)))
            after_push_back = lowest
            await asyncio.gather(*(gateway.complete(f"r{i}", purpose="t") for i in range(120)))
            watcher.cancel()
            return after_push_back, gateway.concurrency_limit

    after_push_back, recovered = run(scenario())
    # One burst of 429s is one congestion signal: halved once, not once per rejected request.
    assert after_push_back == 4
    assert recovered == 8


def test_budget_stops_before_exceeding(fake: FakeTeacher) -> None:
    teacher = teacher_for(fake, price_in_per_1k=1.0, price_out_per_1k=1.0, max_tokens=200)
    gateway = Gateway(teacher, budget_usd=0.5)

    async def scenario() -> int:
        done = 0
        async with gateway:
            with pytest.raises(BudgetExceeded, match="budget"):
                for i in range(1000):
                    await gateway.complete(f"Explain topic number {i}.", purpose="t")
                    done += 1
        return done

    done = run(scenario())
    assert 0 < done < 1000
    assert gateway.spent_usd <= 0.5
    assert fake.stats()["completions"] == done


def test_cache_hit_sends_no_request_and_costs_nothing(fake: FakeTeacher) -> None:
    cache = InMemoryCache()
    teacher = teacher_for(fake, price_in_per_1k=1.0)

    async def scenario():
        async with Gateway(teacher, cache=cache) as gateway:
            first = await gateway.complete("Name a fruit.", purpose="t")
            second = await gateway.complete("Name a fruit.", purpose="t")
            other_sample = await gateway.complete("Name a fruit.", purpose="t", sample_index=1)
            return first, second, other_sample

    first, second, other_sample = run(scenario())
    assert second.cached and second.cost_usd == 0 and second.text == first.text
    assert not other_sample.cached
    assert fake.stats()["requests"] == 2


def test_request_key_covers_model_prompt_sampling_and_sample_index(fake: FakeTeacher) -> None:
    gateway = Gateway(teacher_for(fake))
    base = gateway.build_request("hi", sampling=Sampling(), sample_index=0)
    variants = [
        gateway.build_request("hi!", sampling=Sampling(), sample_index=0),
        gateway.build_request("hi", sampling=Sampling(temperature=0.1), sample_index=0),
        gateway.build_request("hi", sampling=Sampling(top_p=0.3), sample_index=0),
        gateway.build_request("hi", sampling=Sampling(max_tokens=7), sample_index=0),
        gateway.build_request("hi", sampling=Sampling(stop=["\n"]), sample_index=0),
        gateway.build_request("hi", sampling=Sampling(), sample_index=1),
        Gateway(teacher_for(fake, model="other")).build_request("hi", sampling=Sampling(), sample_index=0),
    ]
    keys = {request_key(base)} | {request_key(v) for v in variants}
    assert len(keys) == 1 + len(variants)
    assert request_key(dict(reversed(list(base.items())))) == request_key(base)


def test_jsonl_cache_replays_a_run_offline(fake: FakeTeacher, tmp_path) -> None:
    path = tmp_path / "cache.jsonl"
    online = run(_complete_once(Gateway(teacher_for(fake), cache=JsonlFileCache(path))))
    offline_teacher = teacher_for_dead_port(max_retries=0)
    replay = run(_complete_once(Gateway(offline_teacher, cache=JsonlFileCache(path))))
    assert replay.cached and replay.text == online.text
    with path.open("a") as fh:
        fh.write('{"key": "trunc')  # a write cut short by a crash must not break the next load
    assert len(JsonlFileCache(path)) == 1


def test_jobs_run_their_gateway_on_uvloop_and_get_the_answer(fake: FakeTeacher, transport: str) -> None:
    async def scenario() -> tuple[str, str]:
        loop = type(asyncio.get_running_loop()).__module__
        async with Gateway(teacher_for(fake, transport=transport)) as gateway:
            return loop, (await gateway.complete("Explain tides.", purpose="test")).text

    fake.script_response("Explain tides.", "The moon pulls the sea.")
    loop, text = run_coroutine(scenario())
    assert loop.startswith("uvloop")
    assert text == "The moon pulls the sea."
    assert fake.stats()["requests"] == 1


def test_estimate_cost_extrapolates_from_a_dry_run(fake: FakeTeacher) -> None:
    teacher = teacher_for(fake, price_in_per_1k=0.5, price_out_per_1k=1.5)

    async def scenario():
        async with Gateway(teacher, cache=InMemoryCache()) as gateway:
            estimate = await estimate_cost(
                gateway=gateway, prompts=["Explain rain.", "Explain snow."], total_calls=1000
            )
            return estimate, gateway.spent_usd

    estimate, spent = run(scenario())
    assert estimate.sampled_calls == 2
    assert estimate.estimated_cost_usd == pytest.approx(estimate.cost_per_call_usd * 1000)
    assert estimate.cost_per_call_usd == pytest.approx(spent / 2, rel=0.05)


def test_load_teachers_from_inline_json_and_yaml_file(tmp_path) -> None:
    inline = load_teachers(json.dumps([{"name": "a", "base_url": "http://x/v1", "model": "m"}]))
    assert inline["a"].api == "chat" and inline["a"].api_key_env is None
    path = tmp_path / "teachers.yaml"
    path.write_text(
        "teachers:\n  - name: gpt\n    base_url: https://api.openai.com/v1\n    model: gpt-4o-mini\n"
        "    api_key_env: OPENAI_API_KEY\n    price_in_per_1k: 0.00015\n    max_concurrency: 32\n"
    )
    teachers = load_teachers(str(path))
    assert teachers["gpt"].max_concurrency == 32 and teachers["gpt"].price_in_per_1k == 0.00015
    mapping = load_teachers('{"local": {"base_url": "http://127.0.0.1:8000/v1", "model": "qwen"}}')
    assert mapping["local"].name == "local"
    with pytest.raises(ValueError, match="invalid teacher"):
        load_teachers('[{"name": "broken"}]')


def test_fake_teacher_runs_as_a_process_with_admin_faults_and_stats(tmp_path) -> None:
    import subprocess
    import sys
    import urllib.request
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    port = int(teacher_for_dead_port().base_url.split(":")[2].split("/")[0])
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"responses": [{"match": "ping", "text": "pong", "times": None}]}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_teacher", "--port", str(port), "--script", str(script)],
        cwd=root,
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"

    def post(path: str, body: object) -> None:
        req = urllib.request.Request(
            url + path, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
        )
        urllib.request.urlopen(req, timeout=5).read()

    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(url + "/v1/models", timeout=1).read()
                break
            except OSError:
                assert time.monotonic() < deadline, "fake teacher process did not start"
                time.sleep(0.1)
        post("/admin/faults", {"status": 429, "count": 1, "retry_after": 0})
        post("/admin/latency", {"ms": 50})
        fake = FakeTeacher.__new__(FakeTeacher)
        fake.base_url = url + "/v1"
        gateway = Gateway(teacher_for(fake))
        result = run(_complete_once(gateway, "ping"))
        assert result.text == "pong" and gateway.usage.retries == 1
        stats = json.loads(urllib.request.urlopen(url + "/admin/stats", timeout=5).read())
        assert stats["requests"] == 2 and stats["completions"] == 1
        assert list(stats["by_hash"].values()) == [2]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
