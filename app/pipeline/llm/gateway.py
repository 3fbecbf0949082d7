"""The one gateway to teacher LLMs.

Every call goes through :class:`Gateway`: the official ``openai`` client against any OpenAI-compatible
endpoint, bounded and adaptive concurrency, retries that honour ``Retry-After``, a circuit breaker, a hard
budget, a response cache keyed by the full request, and one :class:`CallRecord` per call for accounting.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import os
import random
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import openai
import yaml
from pydantic import BaseModel, Field, ValidationError

from app.pipeline.http_client import AiohttpSendClient

T = TypeVar("T")
Message = Mapping[str, str]
Prompt = str | Sequence[Message]


class TeacherError(Exception):
    """A teacher call failed for a reason that retrying the same request will not fix (e.g. HTTP 400)."""


class TeacherUnavailable(TeacherError):
    """The teacher keeps failing: the job should pause (not spin) until someone looks at the endpoint."""


class BudgetExceeded(Exception):
    """Issuing the next call would exceed the job's hard budget."""


class Sampling(BaseModel):
    """Sampling parameters; ``None`` means "use the teacher's default"."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None

    def merged_over(self, base: Sampling) -> Sampling:
        """These values where set, ``base``'s elsewhere."""
        return Sampling(**{**base.model_dump(), **self.model_dump(exclude_none=True)})


class TeacherConfig(BaseModel):
    """A named teacher endpoint (see docs/teachers.md)."""

    name: str
    base_url: str
    model: str
    api_key_env: str | None = Field(None, description="Environment variable holding the key; None for local.")
    api: Literal["chat", "completions"] = "chat"
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 1024
    stop: list[str] | None = None
    price_in_per_1k: float = 0.0
    price_out_per_1k: float = 0.0
    max_concurrency: int = Field(8, ge=1)
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(6, ge=0)
    backoff_base_s: float = Field(1.0, ge=0, description="First retry waits about this long, then doubles.")
    backoff_max_s: float = Field(60.0, ge=0)
    breaker_failures: int = Field(
        3, ge=1, description="Consecutive calls failing after all their retries that open the circuit."
    )
    breaker_window_s: float = Field(
        600.0, gt=0, description="Open the circuit when every attempt has failed for this long."
    )
    extra_body: dict[str, Any] = Field(default_factory=dict, description="Vendor-specific request fields.")
    transport: Literal["aiohttp", "httpx"] = Field(
        "aiohttp",
        description="How the openai client sends: over aiohttp (lean, the default) or its own httpx2 stack.",
    )

    @property
    def default_sampling(self) -> Sampling:
        return Sampling(
            temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens, stop=self.stop
        )


def load_teachers(source: str) -> dict[str, TeacherConfig]:
    """Teachers from a YAML/JSON file path or an inline JSON string (the ``IF_TEACHERS`` setting).

    Accepted shapes: ``{"teachers": [...]}``, a list of teachers, or a mapping ``name -> teacher``.
    """
    text = source.strip()
    if not text:
        return {}
    if text[0] in "[{":
        data: Any = json.loads(text)
    else:
        path = Path(text)
        if not path.is_file():
            raise ValueError(f"teachers config not found: {path}")
        raw = path.read_text(encoding="utf-8")
        data = json.loads(raw) if path.suffix == ".json" else yaml.safe_load(raw)
    if isinstance(data, dict) and "teachers" in data:
        data = data["teachers"]
    if isinstance(data, dict):
        items = [{"name": name, **cfg} for name, cfg in data.items()]
    elif isinstance(data, list):
        items = data
    else:
        raise ValueError("teachers config must be a list of teachers or a mapping name -> teacher")
    teachers: dict[str, TeacherConfig] = {}
    for item in items:
        try:
            teacher = TeacherConfig.model_validate(item)
        except ValidationError as exc:
            raise ValueError(f"invalid teacher config {item.get('name', '?')!r}: {exc}") from exc
        teachers[teacher.name] = teacher
    return teachers


class ResponseCache(Protocol):
    """Where teacher responses are kept, keyed by :func:`request_key`. Sync: called via a thread."""

    def get(self, key: str) -> dict[str, Any] | None: ...

    def put(
        self, key: str, request: dict[str, Any], response: dict[str, Any], call: CallRecord | None = None
    ) -> None:
        """Keep ``response``; ``call`` is the paid call that got it, for caches that also keep the ledger
        (the job's database cache stores both in one transaction, so a killed worker loses neither)."""
        ...


def request_key(request: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of the full request: model, prompt, all sampling, sample index."""
    canonical = json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class InMemoryCache:
    def __init__(self) -> None:
        self._data: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self._data.get(key)

    def put(
        self, key: str, request: dict[str, Any], response: dict[str, Any], call: CallRecord | None = None
    ) -> None:
        with self._lock:
            self._data[key] = response

    def __len__(self) -> int:
        return len(self._data)


class JsonlFileCache:
    """Append-only JSONL file: one ``{"key", "request", "response"}`` per line; replays a run offline."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._data: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        if self.path.exists():
            with self.path.open(encoding="utf-8") as fh:
                for line in fh:
                    # A process killed mid-write leaves a partial last line: that one call is simply redone.
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    self._data[row["key"]] = row["response"]

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self._data.get(key)

    def put(
        self, key: str, request: dict[str, Any], response: dict[str, Any], call: CallRecord | None = None
    ) -> None:
        line = json.dumps({"key": key, "request": request, "response": response}, ensure_ascii=False)
        with self._lock:
            self._data[key] = response
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(line + "\n")

    def __len__(self) -> int:
        return len(self._data)


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str | None
    tokens_in: int
    tokens_out: int
    cached: bool
    cost_usd: float
    latency_ms: float
    key: str


@dataclass(frozen=True)
class CallRecord:
    """One call as the job's accounting sees it (cache hits included, with ``cached=True`` and no cost)."""

    key: str
    purpose: str
    model: str
    tokens_in: int
    tokens_out: int
    latency_ms: float
    cost_usd: float
    finish_reason: str | None
    cached: bool
    error: str | None


@dataclass
class Usage:
    calls: int = 0
    cached_calls: int = 0
    failed_calls: int = 0
    retries: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0


class _AdaptiveLimit:
    """AIMD concurrency: halve when the endpoint pushes back, grow by one per window of successes.

    Waiters queue FIFO and each released slot wakes exactly one of them: with hundreds of calls queued,
    waking them all on every release (a Condition) costs more CPU than the calls themselves.
    """

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.limit = float(maximum)
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._last_decrease = 0.0

    async def acquire(self) -> None:
        if not self._waiters and self.in_flight < max(1, int(self.limit)):
            self.in_flight += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.in_flight -= 1  # the slot was handed to us just as we were cancelled: pass it on
                self._wake()
            else:
                self._waiters.remove(waiter)
            raise

    def release(self, *, success: bool) -> None:
        self.in_flight -= 1
        if success and self.limit < self.maximum:
            self.limit = min(float(self.maximum), self.limit + 1.0 / self.limit)
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_flight < max(1, int(self.limit)):
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)

    def push_back(self, started_at: float) -> None:
        # Only requests sent under the current limit count: a burst of 32 rejected requests that were
        # all in flight together is one congestion signal, not 32 halvings.
        if started_at >= self._last_decrease:
            self.limit = max(1.0, self.limit / 2)
            self._last_decrease = time.monotonic()


def _retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def approx_tokens(text: str) -> int:
    """Rough token count for budgeting before a call (≈4 chars per token; CJK ≈1 token per char)."""
    cjk = sum(1 for ch in text if "\u3000" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff")
    return cjk + (len(text) - cjk) // 4 + 1


def _prompt_text(prompt: Prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(m.get("content", "") for m in prompt)


class Gateway:
    """Talks to one teacher. Belongs to one event loop; close it with ``await gateway.aclose()``."""

    def __init__(
        self,
        teacher: TeacherConfig,
        *,
        cache: ResponseCache | None = None,
        on_call: Callable[[CallRecord], None] | None = None,
        budget_usd: float | None = None,
        client: openai.AsyncOpenAI | None = None,
    ) -> None:
        self.teacher = teacher
        self.cache = cache
        self.on_call = on_call
        self.budget_usd = budget_usd
        self.usage = Usage()
        self._client = client or openai.AsyncOpenAI(
            api_key=self._api_key(teacher),
            base_url=teacher.base_url,
            timeout=teacher.timeout_s,
            # Retries are ours: the client's own would hide 429s from the concurrency control and the breaker.
            max_retries=0,
            http_client=(
                AiohttpSendClient(max_connections=teacher.max_concurrency, timeout_s=teacher.timeout_s)
                if teacher.transport == "aiohttp"
                else None
            ),
        )
        # Absolute endpoint URLs: the client then parses a URL once per call instead of merging it in.
        base = str(self._client.base_url).rstrip("/")
        self._chat_url, self._completions_url = f"{base}/chat/completions", f"{base}/completions"
        self._limit = _AdaptiveLimit(teacher.max_concurrency)
        self._resume_at = 0.0
        self._reserved_usd = 0.0
        self._max_tokens_out = 0
        self._consecutive_failures = 0
        self._failing_since: float | None = None
        self._open_reason: str | None = None
        self._jitter = random.Random()

    @staticmethod
    def _api_key(teacher: TeacherConfig) -> str:
        if not teacher.api_key_env:
            return "not-needed"  # local servers (vLLM, Ollama, llama.cpp) ignore it; the client wants one
        key = os.environ.get(teacher.api_key_env)
        if not key:
            raise TeacherUnavailable(
                f"teacher {teacher.name!r}: its API key variable {teacher.api_key_env} is not set"
            )
        return key

    @property
    def model(self) -> str:
        return self.teacher.model

    @property
    def spent_usd(self) -> float:
        return self.usage.cost_usd

    @property
    def concurrency_limit(self) -> int:
        return max(1, int(self._limit.limit))

    async def aclose(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> Gateway:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def build_request(self, prompt: Prompt, *, sampling: Sampling, sample_index: int) -> dict[str, Any]:
        """The full request as cached and hashed; what is sent is exactly this minus ``sample_index``."""
        s = sampling.merged_over(self.teacher.default_sampling)
        request: dict[str, Any] = {"model": self.teacher.model, "api": self.teacher.api}
        if self.teacher.api == "chat":
            request["messages"] = (
                [{"role": "user", "content": prompt}]
                if isinstance(prompt, str)
                else [{"role": m["role"], "content": m["content"]} for m in prompt]
            )
        else:
            request["prompt"] = _prompt_text(prompt)
        request.update(
            temperature=s.temperature,
            top_p=s.top_p,
            max_tokens=s.max_tokens,
            stop=s.stop,
            sample_index=sample_index,
        )
        if self.teacher.extra_body:
            request["extra_body"] = self.teacher.extra_body
        return request

    async def complete(
        self,
        prompt: Prompt,
        *,
        purpose: str,
        sampling: Sampling | None = None,
        sample_index: int = 0,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> Completion:
        """One completion: from the cache if this exact request was answered before, else from the teacher."""
        overrides = Sampling(temperature=temperature, max_tokens=max_tokens)
        merged = overrides.merged_over(sampling) if sampling else overrides
        request = self.build_request(prompt, sampling=merged, sample_index=sample_index)
        key = request_key(request)
        if self.cache is not None:
            hit = await asyncio.to_thread(self.cache.get, key)
            if hit is not None:
                completion = Completion(
                    text=hit.get("text", ""),
                    finish_reason=hit.get("finish_reason"),
                    tokens_in=int(hit.get("tokens_in", 0)),
                    tokens_out=int(hit.get("tokens_out", 0)),
                    cached=True,
                    cost_usd=0.0,
                    latency_ms=0.0,
                    key=key,
                )
                self.usage.cached_calls += 1
                self._record(completion, purpose=purpose, error=None)
                return completion
        return await self._call_with_retries(request, key=key, purpose=purpose)

    async def _keep(self, request: dict[str, Any], completion: Completion, *, purpose: str) -> None:
        """Store a paid answer (and its call record) in the cache, then report the call."""
        call = self._call_record(completion, purpose=purpose, error=None)
        if self.cache is not None:
            response = {
                "text": completion.text,
                "finish_reason": completion.finish_reason,
                "tokens_in": completion.tokens_in,
                "tokens_out": completion.tokens_out,
            }
            await asyncio.to_thread(self.cache.put, completion.key, request, response, call)
        if self.on_call is not None:
            self.on_call(call)

    def _call_record(self, c: Completion, *, purpose: str, error: str | None) -> CallRecord:
        return CallRecord(
            key=c.key,
            purpose=purpose,
            model=self.teacher.model,
            tokens_in=c.tokens_in,
            tokens_out=c.tokens_out,
            latency_ms=c.latency_ms,
            cost_usd=c.cost_usd,
            finish_reason=c.finish_reason,
            cached=c.cached,
            error=error,
        )

    def _record(self, c: Completion, *, purpose: str, error: str | None) -> None:
        if self.on_call is not None:
            self.on_call(self._call_record(c, purpose=purpose, error=error))

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        t = self.teacher
        return tokens_in * t.price_in_per_1k / 1000 + tokens_out * t.price_out_per_1k / 1000

    def _estimate_call_cost(self, request: Mapping[str, Any]) -> float:
        tokens_in = approx_tokens(
            json.dumps(request.get("messages") or request.get("prompt"), ensure_ascii=False)
        )
        # Until the first answer we assume the worst case (max_tokens); after, the longest answer seen.
        tokens_out = self._max_tokens_out if self.usage.calls else int(request.get("max_tokens") or 0)
        return self.cost(tokens_in, tokens_out)

    def _check_open(self) -> None:
        if self._open_reason is not None:
            raise TeacherUnavailable(self._open_reason)

    def _open(self, why: str) -> None:
        t = self.teacher
        self._open_reason = (
            f"teacher {t.name!r} ({t.model} at {t.base_url}) is unavailable: {why}. "
            "The job is paused; check the endpoint (or its rate limits) and resume the job."
        )

    def _note_failure(self, now: float, error: str) -> None:
        if self._failing_since is None:
            self._failing_since = now
        elif now - self._failing_since >= self.teacher.breaker_window_s:
            self._open(f"every attempt for {now - self._failing_since:.0f}s failed; last error: {error}")

    async def _call_with_retries(self, request: dict[str, Any], *, key: str, purpose: str) -> Completion:
        t = self.teacher
        last_error = ""
        for attempt in range(t.max_retries + 1):
            self._check_open()
            if self.budget_usd is not None:
                estimate = self._estimate_call_cost(request)
                if self.usage.cost_usd + self._reserved_usd + estimate > self.budget_usd:
                    raise BudgetExceeded(
                        f"budget ${self.budget_usd:.4f} reached: spent ${self.usage.cost_usd:.4f}, "
                        f"${self._reserved_usd:.4f} in flight, next call ≈ ${estimate:.4f}"
                    )
            else:
                estimate = 0.0
            # Reserved from the check on, not from when a slot frees up: otherwise every call queued
            # behind the concurrency limit would pass the check against the same spent amount.
            self._reserved_usd += estimate
            try:
                wait = self._resume_at - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                    self._check_open()
                await self._limit.acquire()
            except BaseException:
                self._reserved_usd -= estimate
                raise
            started = time.monotonic()
            success = False
            try:
                completion = await self._send(request, key=key)
                # The slot is held until the answer is stored: a worker killed at any instant has at most
                # max_concurrency answers that were paid for and not kept (a backlog of stores would
                # otherwise grow past it while new calls go out).
                await self._keep(request, completion, purpose=purpose)
                success = True
            except openai.APIStatusError as exc:
                status = exc.status_code
                last_error = f"HTTP {status}: {str(exc)[:200]}"
                if status in (401, 403):
                    self._open(f"the endpoint refused the credentials ({last_error})")
                    raise TeacherUnavailable(self._open_reason or last_error) from exc
                if status == 404:
                    self._open(f"model or endpoint not found ({last_error})")
                    raise TeacherUnavailable(self._open_reason or last_error) from exc
                if status not in (408, 409, 429) and status < 500:
                    self.usage.failed_calls += 1
                    self._record_error(key, purpose, last_error)
                    raise TeacherError(last_error) from exc
                if status in (429, 503):
                    self._limit.push_back(started)
                retry_after = _retry_after_seconds(exc.response.headers if exc.response is not None else None)
                if retry_after is not None:
                    # Everyone waits: the endpoint said when it will take requests again.
                    self._resume_at = max(self._resume_at, time.monotonic() + retry_after)
            except (openai.APITimeoutError, openai.APIConnectionError) as exc:
                last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
                retry_after = None
            finally:
                self._reserved_usd -= estimate
                self._limit.release(success=success)
            if success:
                self._consecutive_failures = 0
                self._failing_since = None
                self.usage.calls += 1
                self.usage.tokens_in += completion.tokens_in
                self.usage.tokens_out += completion.tokens_out
                self._max_tokens_out = max(self._max_tokens_out, completion.tokens_out)
                self.usage.cost_usd += completion.cost_usd
                return completion
            self._note_failure(time.monotonic(), last_error)
            if attempt == t.max_retries:
                break
            self.usage.retries += 1
            if retry_after is None:
                ceiling = min(t.backoff_max_s, t.backoff_base_s * 2**attempt)
                await asyncio.sleep(ceiling / 2 + self._jitter.uniform(0, ceiling / 2))
        self.usage.failed_calls += 1
        self._consecutive_failures += 1
        self._record_error(key, purpose, last_error)
        if self._consecutive_failures >= t.breaker_failures:
            self._open(
                f"{self._consecutive_failures} consecutive calls failed after {t.max_retries} retries each; "
                f"last error: {last_error}"
            )
            self._check_open()
        raise TeacherError(f"teacher {t.name!r} call failed after {t.max_retries} retries: {last_error}")

    def _record_error(self, key: str, purpose: str, error: str) -> None:
        failed = Completion("", None, 0, 0, cached=False, cost_usd=0.0, latency_ms=0.0, key=key)
        self._record(failed, purpose=purpose, error=error[:500])

    async def _send(self, request: dict[str, Any], *, key: str) -> Completion:
        body: dict[str, Any] = {"model": request["model"]}
        for name in ("temperature", "top_p", "max_tokens", "stop"):
            if request.get(name) is not None:
                body[name] = request[name]
        if request.get("extra_body"):
            body.update(request["extra_body"])
        chat = request["api"] == "chat"
        if chat:
            body["messages"] = request["messages"]
        else:
            body["prompt"] = request["prompt"]
        started = time.perf_counter()
        # The client's low-level post keeps its auth, timeouts and typed errors (APIStatusError with the
        # response headers) but skips the per-call schema walk of the request and the pydantic model of
        # the response: ~0.6 ms of CPU per call, which is most of our CPU per kept record.
        data: Any = await self._client.post(
            self._chat_url if chat else self._completions_url, body=body, cast_to=object
        )
        latency_ms = (time.perf_counter() - started) * 1000
        if not isinstance(data, dict):
            raise TeacherError(
                f"teacher {self.teacher.name!r} answered something that is not JSON: {data!r:.200}"
            )
        choices = data.get("choices") or [{}]
        choice = choices[0] if isinstance(choices[0], dict) else {}
        if chat:
            message = choice.get("message") or {}
            text = message.get("content") or ""
        else:
            text = choice.get("text") or ""
        finish = choice.get("finish_reason")
        usage = data.get("usage") or {}
        if usage.get("prompt_tokens") is not None and usage.get("completion_tokens") is not None:
            tokens_in, tokens_out = int(usage["prompt_tokens"]), int(usage["completion_tokens"])
        else:
            # Some local servers omit usage: estimate so cost and budgets still mean something.
            tokens_in = approx_tokens(json.dumps(request.get("messages") or request.get("prompt")))
            tokens_out = approx_tokens(text)
        return Completion(
            text=str(text),
            finish_reason=finish,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            cached=False,
            cost_usd=self.cost(tokens_in, tokens_out),
            latency_ms=latency_ms,
            key=key,
        )


@dataclass(frozen=True)
class CostEstimate:
    sampled_calls: int
    tokens_in_per_call: float
    tokens_out_per_call: float
    cost_per_call_usd: float
    total_calls: int
    estimated_cost_usd: float


async def estimate_cost(
    *,
    gateway: Gateway,
    prompts: Sequence[Prompt],
    total_calls: int,
    purpose: str = "dry_run",
    sampling: Sampling | None = None,
    sample_indices: Sequence[int] | None = None,
) -> CostEstimate:
    """Send a few real prompts and extrapolate their mean cost to ``total_calls``.

    Pass the job's own first prompts and sample indices: the answers land in the cache, so the job
    itself does not pay for them again.
    """
    indices = list(sample_indices) if sample_indices is not None else [0] * len(prompts)
    results = await asyncio.gather(
        *(
            gateway.complete(p, purpose=purpose, sampling=sampling, sample_index=i)
            for p, i in zip(prompts, indices, strict=True)
        )
    )
    n = max(1, len(results))
    tin = sum(r.tokens_in for r in results) / n
    tout = sum(r.tokens_out for r in results) / n
    per_call = gateway.cost(round(tin), round(tout))
    return CostEstimate(
        sampled_calls=len(results),
        tokens_in_per_call=tin,
        tokens_out_per_call=tout,
        cost_per_call_usd=per_call,
        total_calls=total_calls,
        estimated_cost_usd=per_call * total_calls,
    )


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # Windows has no uvloop: asyncio's own loop
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)``, on uvloop's event loop where it is installed (Linux, macOS).

    Jobs, the CLI and the estimate run their gateway through this: uvloop's loop and socket transports
    are C, which took our CPU per kept record from ~2.1 to ~1.5 ms at the median in bench/generate.py
    (docs/benchmarks.md; single runs vary by about as much).
    """
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(coro)


async def gather_or_cancel(aws: Sequence[Awaitable[T]]) -> list[T]:
    """Results in input order; on the first error the other calls are cancelled, not left spending money."""
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
