"""What a teacher call ends in: an answer, a ledger row, or one of three errors the job acts on.

A module of its own because both sides of the gateway use these: the caches store a :class:`CallRecord`
with the answer it paid for (``cache.py``), the limits raise :class:`TeacherUnavailable` when the circuit
opens (``limits.py``), and the gateway returns and counts them. Here they import nothing, so neither the
caches nor the limits import the gateway.
"""

from __future__ import annotations

from dataclasses import dataclass


class TeacherError(Exception):
    """A teacher call failed for a reason that retrying the same request will not fix (e.g. HTTP 400)."""


class TeacherUnavailable(TeacherError):
    """The teacher keeps failing: the job should pause (not spin) until someone looks at the endpoint."""


class BudgetExceeded(Exception):
    """Issuing the next call would exceed the job's hard budget."""


@dataclass(frozen=True)
class Completion:
    """One answer; ``key`` is its request's :func:`~app.pipeline.llm.cache.request_key`, which ties it to
    its cache entry and ledger row."""

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
    """A gateway's running totals: what the budget is checked against and what a job reports."""

    calls: int = 0
    cached_calls: int = 0
    failed_calls: int = 0
    retries: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
