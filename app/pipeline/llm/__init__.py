"""The one gateway to teacher LLMs.

Every call goes through :class:`Gateway`: the official ``openai`` client against any OpenAI-compatible
endpoint, bounded and adaptive concurrency, retries that honour ``Retry-After``, a circuit breaker, a hard
budget, a response cache keyed by the full request, and one :class:`CallRecord` per call for accounting.

The parts, each importable on its own, from the bottom up:

* ``config``: :class:`TeacherConfig` (endpoint, sampling defaults, prices, limits) and :func:`load_teachers`;
* ``calls``: what a call ends in: :class:`Completion`, :class:`CallRecord`, :class:`Usage` and the errors;
* ``cache``: :func:`request_key` and the caches that make a repeated request free;
* ``limits``: adaptive concurrency, ``Retry-After``, backoff and the circuit breaker;
* ``http_client``: the aiohttp sender under the ``openai`` client (only the gateway uses it);
* ``gateway``: :class:`Gateway`, which puts them together, and :func:`estimate_cost`;
* ``loop``: :func:`run_coroutine` (uvloop) and :func:`gather_or_cancel` for the code that drives a gateway.

Import from here (``from app.pipeline.llm import Gateway``); the submodules are the layout, not the API.
Like all of ``app.pipeline``, nothing here imports SQLAlchemy or FastAPI (tests/test_layering.py).
"""

from app.pipeline.llm.cache import InMemoryCache, JsonlFileCache, ResponseCache, request_key
from app.pipeline.llm.calls import (
    BudgetExceeded,
    CallRecord,
    Completion,
    TeacherError,
    TeacherUnavailable,
    Usage,
)
from app.pipeline.llm.config import Sampling, TeacherConfig, load_teachers
from app.pipeline.llm.gateway import CostEstimate, Gateway, Message, Prompt, approx_tokens, estimate_cost
from app.pipeline.llm.loop import gather_or_cancel, run_coroutine, run_in_batches

__all__ = [
    "BudgetExceeded",
    "CallRecord",
    "Completion",
    "CostEstimate",
    "Gateway",
    "InMemoryCache",
    "JsonlFileCache",
    "Message",
    "Prompt",
    "ResponseCache",
    "Sampling",
    "TeacherConfig",
    "TeacherError",
    "TeacherUnavailable",
    "Usage",
    "approx_tokens",
    "estimate_cost",
    "gather_or_cancel",
    "load_teachers",
    "request_key",
    "run_coroutine",
    "run_in_batches",
]
