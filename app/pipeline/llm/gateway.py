"""The one gateway to a teacher LLM: every call goes through :meth:`Gateway.complete`.

A call is answered from the cache when this exact request was answered before (``cache.py``); otherwise
it is sent with the official ``openai`` client and retried until it is answered, fails in a way no retry
fixes, or runs out of retries. Each attempt goes through the same steps, each a method below:

1. :meth:`Gateway._admit`: the circuit must be closed, the job's hard budget must cover the call's
   estimated cost (reserved until the attempt ends), the whole gateway waits out a ``Retry-After``, and the
   attempt takes a concurrency slot (``limits.py``);
2. :meth:`Gateway._send`, then :meth:`Gateway._keep`: the answer and its ledger row are stored before the
   slot is given back;
3. on failure, :meth:`Gateway._raise_unless_retryable` ends the call for answers no retry changes, and
   :meth:`Gateway._slow_down` turns the others into a smaller concurrency limit and a wait;
4. :meth:`Gateway._account` counts an answered call; :meth:`Gateway._give_up` a call out of retries.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import openai

from app.pipeline.llm.cache import ResponseCache, request_key
from app.pipeline.llm.calls import (
    BudgetExceeded,
    CallRecord,
    Completion,
    TeacherError,
    TeacherUnavailable,
    Usage,
)
from app.pipeline.llm.config import Sampling, TeacherConfig
from app.pipeline.llm.http_client import AiohttpSendClient
from app.pipeline.llm.limits import AdaptiveLimit, CircuitBreaker, backoff_s, retry_after_seconds

Message = Mapping[str, str]
Prompt = str | Sequence[Message]


def approx_tokens(text: str) -> int:
    """Rough token count for budgeting before a call (≈4 chars per token; CJK ≈1 token per char)."""
    cjk = sum(1 for ch in text if "\u3000" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff")
    return cjk + (len(text) - cjk) // 4 + 1


def _prompt_text(prompt: Prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(m.get("content", "") for m in prompt)


@dataclass(frozen=True)
class _Retryable:
    """An attempt that failed in a way a later attempt may not: what went wrong, and the wait the endpoint
    asked for (``None``: it did not say, so the gateway backs off on its own)."""

    error: str
    retry_after: float | None


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
        self._limit = AdaptiveLimit(teacher.max_concurrency)
        self._breaker = CircuitBreaker(teacher)
        self._resume_at = 0.0
        self._reserved_usd = 0.0
        self._max_tokens_out = 0
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

    async def _call_with_retries(self, request: dict[str, Any], *, key: str, purpose: str) -> Completion:
        """Attempts until one is answered and stored, one fails in a way no retry fixes (raised from
        :meth:`_attempt`), or ``max_retries`` retries have failed too."""
        t = self.teacher
        last_error = ""
        for attempt in range(t.max_retries + 1):
            outcome = await self._attempt(request, key=key, purpose=purpose)
            if isinstance(outcome, Completion):
                self._account(outcome)
                return outcome
            last_error = outcome.error
            self._breaker.attempt_failed(time.monotonic(), last_error)
            if attempt == t.max_retries:
                break
            self.usage.retries += 1
            if outcome.retry_after is None:
                # With a Retry-After, _admit already waits until the endpoint said it takes requests again.
                await asyncio.sleep(
                    backoff_s(attempt, base_s=t.backoff_base_s, max_s=t.backoff_max_s, jitter=self._jitter)
                )
        raise self._give_up(key=key, purpose=purpose, last_error=last_error)

    async def _attempt(self, request: dict[str, Any], *, key: str, purpose: str) -> Completion | _Retryable:
        """One attempt, admitted, sent and stored; a failure worth retrying is returned, not raised, so the
        retry loop reads as the policy it is."""
        estimate = await self._admit(request)
        started = time.monotonic()
        success = False
        try:
            completion = await self._send(request, key=key)
            # The slot is held until the answer is stored: a worker killed at any instant has at most
            # max_concurrency answers that were paid for and not kept (a backlog of stores would
            # otherwise grow past it while new calls go out).
            await self._keep(request, completion, purpose=purpose)
            success = True
            return completion
        except openai.APIStatusError as exc:
            error = f"HTTP {exc.status_code}: {str(exc)[:200]}"
            self._raise_unless_retryable(exc, error, key=key, purpose=purpose)
            return _Retryable(error, retry_after=self._slow_down(exc, started=started))
        except (openai.APITimeoutError, openai.APIConnectionError) as exc:
            return _Retryable(f"{type(exc).__name__}: {str(exc)[:200]}", retry_after=None)
        finally:
            self._reserved_usd -= estimate
            self._limit.release(success=success)

    async def _admit(self, request: Mapping[str, Any]) -> float:
        """Wait until an attempt may go out and take its concurrency slot; the budget reserved for it,
        which the caller gives back when the attempt ends (here, if it never starts)."""
        self._breaker.check()
        estimate = self._reserve_budget(request)
        try:
            wait = self._resume_at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                self._breaker.check()  # other calls may have opened the circuit while this one waited
            await self._limit.acquire()
        except BaseException:
            self._reserved_usd -= estimate
            raise
        return estimate

    def _reserve_budget(self, request: Mapping[str, Any]) -> float:
        """Refuse the call if its estimated cost could take the job past its budget, else reserve it.

        Reserved from the check on, not from when a slot frees up: otherwise every call queued behind the
        concurrency limit would pass the check against the same spent amount.
        """
        if self.budget_usd is None:
            return 0.0
        estimate = self._estimate_call_cost(request)
        if self.usage.cost_usd + self._reserved_usd + estimate > self.budget_usd:
            raise BudgetExceeded(
                f"budget ${self.budget_usd:.4f} reached: spent ${self.usage.cost_usd:.4f}, "
                f"${self._reserved_usd:.4f} in flight, next call ≈ ${estimate:.4f}"
            )
        self._reserved_usd += estimate
        return estimate

    def _raise_unless_retryable(
        self, exc: openai.APIStatusError, error: str, *, key: str, purpose: str
    ) -> None:
        """End the call on an answer no retry changes.

        Refused credentials and an unknown model hold for every call, so they open the circuit and the
        job pauses; any other 4xx but a timeout (408), a conflict (409) or a rate limit (429) is about this
        request only: it fails alone. 5xx and the three above are left to the retries.
        """
        status = exc.status_code
        if status in (401, 403):
            raise self._breaker.open(f"the endpoint refused the credentials ({error})") from exc
        if status == 404:
            raise self._breaker.open(f"model or endpoint not found ({error})") from exc
        if status not in (408, 409, 429) and status < 500:
            self.usage.failed_calls += 1
            self._record_error(key, purpose, error)
            raise TeacherError(error) from exc

    def _slow_down(self, exc: openai.APIStatusError, *, started: float) -> float | None:
        """Answer a retryable refusal: "too many" (429, 503) halves the concurrency limit, and a
        ``Retry-After`` pauses the whole gateway, since the endpoint said when it takes requests again.
        The wait it asked for, if any."""
        if exc.status_code in (429, 503):
            self._limit.push_back(started)
        retry_after = retry_after_seconds(exc.response.headers if exc.response is not None else None)
        if retry_after is not None:
            self._resume_at = max(self._resume_at, time.monotonic() + retry_after)
        return retry_after

    def _account(self, completion: Completion) -> None:
        """Count an answered call: it closes the breaker's counts, and its size bounds later estimates."""
        self._breaker.call_succeeded()
        self.usage.calls += 1
        self.usage.tokens_in += completion.tokens_in
        self.usage.tokens_out += completion.tokens_out
        self._max_tokens_out = max(self._max_tokens_out, completion.tokens_out)
        self.usage.cost_usd += completion.cost_usd

    def _give_up(self, *, key: str, purpose: str, last_error: str) -> TeacherError:
        """Count and record a call that ran out of retries; the error to raise, unless the breaker opens
        on it (then :class:`TeacherUnavailable` is raised here, and the job pauses)."""
        self.usage.failed_calls += 1
        self._record_error(key, purpose, last_error)
        self._breaker.call_failed(last_error)
        t = self.teacher
        return TeacherError(f"teacher {t.name!r} call failed after {t.max_retries} retries: {last_error}")

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
    """What a job will cost, extrapolated from the mean of ``sampled_calls`` real calls."""

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
