"""What slows calls to a teacher down, and what stops them.

A teacher endpoint is shared and rate limited, and it says so in three ways the gateway answers in kind:

* a 429 or 503 means "too many at once": :class:`AdaptiveLimit` halves the number of calls in flight and
  grows it back by one per window of successes (AIMD, as TCP does), so a job settles just under the
  endpoint's limit instead of being refused on every other call;
* a ``Retry-After`` header says when it will take requests again: :func:`retry_after_seconds` reads it,
  and every call of the gateway waits that long, not just the one refused;
* without a header, a failed attempt is retried after :func:`backoff_s`, exponential with jitter, so calls
  refused together do not all come back at the same instant.

And when the endpoint keeps failing, :class:`CircuitBreaker` stops the job from spinning: it opens, every
further call raises :class:`~app.pipeline.llm.calls.TeacherUnavailable`, and the job pauses until someone
has looked at the endpoint and resumes it.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime

from app.pipeline.llm.calls import TeacherUnavailable
from app.pipeline.llm.config import TeacherConfig


class AdaptiveLimit:
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


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """The wait a refusal asks for: ``retry-after-ms`` (OpenAI's), else ``Retry-After`` in seconds or as
    an HTTP date; ``None`` when there is none or it cannot be read (the caller backs off on its own)."""
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


def backoff_s(attempt: int, *, base_s: float, max_s: float, jitter: random.Random) -> float:
    """The wait before retry ``attempt + 1`` when the endpoint did not say: the ceiling doubles per attempt
    (up to ``max_s``) and the wait is drawn from its upper half, so refused calls spread out but none
    comes back much sooner than the ceiling intends."""
    ceiling: float = min(max_s, base_s * 2**attempt)
    return ceiling / 2 + jitter.uniform(0, ceiling / 2)


class CircuitBreaker:
    """Opens when a teacher keeps failing, and stays open for the life of the gateway.

    Two ways to open besides a fatal answer (bad credentials, unknown model; :meth:`open`): the teacher's
    ``breaker_failures`` consecutive calls each failing after all their retries, or every attempt failing
    for ``breaker_window_s`` however many retries the calls have left. It never closes by itself: the job
    pauses, and its gateway is gone; resuming it makes a new one.
    """

    def __init__(self, teacher: TeacherConfig) -> None:
        self.teacher = teacher
        self.consecutive_failures = 0
        self.failing_since: float | None = None
        self.reason: str | None = None

    def check(self) -> None:
        """Raise :class:`TeacherUnavailable` if open: called before each attempt and after each wait."""
        if self.reason is not None:
            raise TeacherUnavailable(self.reason)

    def open(self, why: str) -> TeacherUnavailable:
        """Open with a message that names the teacher and says what to do; the error to raise."""
        t = self.teacher
        self.reason = (
            f"teacher {t.name!r} ({t.model} at {t.base_url}) is unavailable: {why}. "
            "The job is paused; check the endpoint (or its rate limits) and resume the job."
        )
        return TeacherUnavailable(self.reason)

    def attempt_failed(self, now: float, error: str) -> None:
        """Count a failed attempt toward the window: open once every attempt has failed for that long."""
        if self.failing_since is None:
            self.failing_since = now
        elif now - self.failing_since >= self.teacher.breaker_window_s:
            self.open(f"every attempt for {now - self.failing_since:.0f}s failed; last error: {error}")

    def call_succeeded(self) -> None:
        """One answer shows the endpoint works: both counts start again."""
        self.consecutive_failures = 0
        self.failing_since = None

    def call_failed(self, last_error: str) -> None:
        """A call ran out of retries: raise :class:`TeacherUnavailable` if that makes too many in a row."""
        self.consecutive_failures += 1
        if self.consecutive_failures >= self.teacher.breaker_failures:
            raise self.open(
                f"{self.consecutive_failures} consecutive calls failed after {self.teacher.max_retries} "
                f"retries each; last error: {last_error}"
            )
