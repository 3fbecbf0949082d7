"""The event loop a gateway runs on, and how its calls are gathered.

A gateway belongs to one event loop. Jobs, the CLI and the cost estimate are synchronous code that start
one loop per run with :func:`run_coroutine`; inside it, generators fan calls out with
:func:`gather_or_cancel`, which stops paying for the rest of a batch as soon as one call fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Literal, TypeVar

from app.pipeline.llm.calls import BudgetExceeded

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


ItemT = TypeVar("ItemT")
StopReason = Literal["done", "stopped", "budget"]


async def run_in_batches(
    items: Sequence[ItemT],
    one: Callable[[ItemT], Awaitable[T]],
    *,
    batch_size: int,
    emit: Callable[[list[T]], None],
    should_stop: Callable[[], bool],
) -> tuple[StopReason, str]:
    """Call `one` on every item, `batch_size` at a time, emitting each batch's results in item order.

    Stops before the next batch when `should_stop()` says so ("stopped"), or when the budget is spent
    ("budget", with the gateway's message): the batches already emitted are the job's checkpoints."""
    for start in range(0, len(items), batch_size):
        if should_stop():
            return "stopped", ""
        try:
            results = await gather_or_cancel([one(item) for item in items[start : start + batch_size]])
        except BudgetExceeded as exc:
            return "budget", str(exc)
        emit(results)
    return "done", ""
