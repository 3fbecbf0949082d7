"""The event loop a gateway runs on, and how its calls are gathered.

A gateway belongs to one event loop. Jobs, the CLI and the cost estimate are synchronous code that start
one loop per run with :func:`run_coroutine`; inside it, generators fan calls out with
:func:`gather_or_cancel`, which stops paying for the rest of a batch as soon as one call fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


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
