"""Self-Instruct (Wang et al., 2023) with classification-aware instance synthesis.

Resumable by construction: the run proceeds in rounds; round r's prompts are built from the tasks kept up
to round r-2 with an RNG seeded by (seed, round, prompt index); answers are screened in (round, prompt,
item) order, never arrival order (the order rule: :func:`run_self_instruct`, docs/generation.md). With the
same seed and the same response cache a re-run therefore sends no request twice and emits the same records
under the same keys, at any concurrency. Rounds overlap (the next one is screened while this one's tasks
get their instances), so the teacher stays busy across round boundaries.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from app.pipeline.instances import (
    Instance,
    filter_instances,
    instance_prompt,
    parse_input_first,
    parse_output_first,
)
from app.pipeline.listparse import parse_numbered_list, parse_yes_no
from app.pipeline.llm import (
    BudgetExceeded,
    Completion,
    Gateway,
    Sampling,
    TeacherError,
    TeacherUnavailable,
    gather_or_cancel,
)
from app.pipeline.prompts import render_prompt
from app.pipeline.rouge import NearDuplicateIndex
from app.pipeline.rules import RuleConfig, evaluate

Language = Literal["en", "zh"]
_T = TypeVar("_T")
# Room for this many prompts per round in a sample index: index = round * ROUND_STRIDE + prompt.
ROUND_STRIDE = 100_000
# Before the first prompt is screened, each instruction prompt is assumed to give this many candidates (only
# used to decide how many prompts to send ahead of screening; measured: ~4-6 with the fake teacher). Low on
# purpose: too many prompts early costs a few calls, too few costs a round trip.
_PRIOR_CANDIDATES_PER_PROMPT = 3
# Spare candidates a round may screen past what the target needs, for tasks whose instances all fail (each
# is screened only when a task fails: see _Screening).
_SLACK_MIN, _SLACK_SHARE = 2, 0.25
# Prompts go out for this many candidates more than the screening wants, so that a task that fails or an
# answer a little short of the yield rarely waits for another prompt's round trip (one prompt is ~5).
_PROMPT_MARGIN = 2


@dataclass(frozen=True)
class SeedTask:
    instruction: str
    instances: tuple[tuple[str, str], ...] = ()
    is_classification: bool = False
    key: str = ""


@dataclass(frozen=True)
class GenRecord:
    """One generated record, kept or rejected; ``key`` is stable across re-runs (idempotent upserts)."""

    key: str
    instruction: str
    input: str
    output: str
    status: Literal["kept", "rejected"]
    reason: str | None
    source: str
    teacher_model: str
    round: int
    detail: str | None = None
    is_classification: bool | None = None
    label: str | None = None
    prompt_hash: str | None = None
    parent_key: str | None = None
    operation: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GenProgress:
    round: int
    target: int
    kept: int
    """Tasks (Self-Instruct) or evolutions (Evol-Instruct) kept so far."""
    records_kept: int
    records_rejected: int
    rejected_by_reason: dict[str, int]


@dataclass(frozen=True)
class GenEvent:
    """Everything one round produced: write ``records`` (upsert by key) and ``progress`` in one transaction."""

    round: int
    records: tuple[GenRecord, ...]
    progress: GenProgress


StopReason = Literal["target", "stopped", "budget", "exhausted"]


@dataclass(frozen=True)
class SelfInstructResult:
    kept_tasks: int
    records_kept: int
    records_rejected: int
    rejected_by_reason: dict[str, int]
    rounds: int
    stop_reason: StopReason
    message: str = ""
    surplus_tasks: int = 0
    """Candidates screened past the exact target: not emitted. A synchronous run screens a spare only for a
    task that got no instance, so it has none; batch mode screens its slack ahead (self_instruct_batch)."""


class SelfInstructParams(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    target: int = Field(100, ge=1, description="Kept tasks (instructions with at least one kept instance).")
    batch_size: int = Field(8, ge=1, lt=ROUND_STRIDE, description="Instruction prompts per round.")
    num_human: int = Field(6, ge=0, description="In-context instructions from the seed pool.")
    num_machine: int = Field(2, ge=0, description="In-context machine instructions once the pool has them.")
    threshold: float = Field(0.7, gt=0, le=1, description="ROUGE-L F above which an instruction is a dup.")
    max_instances_per_task: int = Field(3, ge=1)
    language: Language = "en"
    sampling: Sampling = Field(default_factory=lambda: Sampling(temperature=0.7, top_p=0.5, max_tokens=1024))
    instance_sampling: Sampling = Field(default_factory=lambda: Sampling(temperature=0.0, max_tokens=600))
    seed: int = 0
    rules: RuleConfig | None = None
    check_instances: bool = Field(True, description="Run the full curation rules on each instance too.")
    max_stale_rounds: int = Field(
        5, ge=1, description="Stop when this many rounds in a row keep nothing (the teacher is exhausted)."
    )
    batch_spares: float = Field(
        0.1, ge=0, le=1, description="Batch mode: spare tasks sent with the instances batches (a fraction)."
    )


def load_seed_tasks(path: str | Path) -> list[SeedTask]:
    """Seed tasks from the Self-Instruct seed format or Alpaca-style records (JSON array or JSONL)."""
    text = Path(path).read_text(encoding="utf-8")
    stripped = text.lstrip()
    rows: list[dict[str, Any]]
    if stripped.startswith("["):
        rows = json.loads(stripped)
    else:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    seeds: list[SeedTask] = []
    for n, row in enumerate(rows):
        instruction = str(row.get("instruction") or row.get("Instruction") or "").strip()
        if not instruction:
            continue
        if "instances" in row:
            instances = tuple((str(i.get("input", "")), str(i.get("output", ""))) for i in row["instances"])
        else:
            instances = ((str(row.get("input", "")), str(row.get("output", ""))),)
        seeds.append(
            SeedTask(
                instruction=instruction,
                instances=instances,
                is_classification=bool(row.get("is_classification", False)),
                key=str(row.get("id") or f"seed:{n}"),
            )
        )
    return seeds


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().rstrip(":：")


def build_instruction_prompt(
    *, human: Sequence[str], machine: Sequence[str], rng: random.Random, params: SelfInstructParams
) -> tuple[str, int]:
    """The "continue this numbered list" prompt and the number the teacher should continue with."""
    n_machine = min(params.num_machine, len(machine))
    n_human = min(len(human), params.num_human + params.num_machine - n_machine)
    chosen = rng.sample(list(human), n_human) + rng.sample(list(machine), n_machine)
    rng.shuffle(chosen)
    examples = "\n".join(f"{i}. {_one_line(text)}" for i, text in enumerate(chosen, start=1))
    nxt = len(chosen) + 1
    return render_prompt("instruction_gen", params.language, examples=examples, next=nxt), nxt


def classification_prompt(instruction: str, *, language: Language) -> str:
    return render_prompt("classify", language, instruction=_one_line(instruction))


# A task's classification call (one short yes/no answer): the same request in synchronous and batch mode, so
# the same cache key, and a synchronous job's answers serve a batch-mode one.
CLASSIFY_SAMPLING = Sampling(temperature=0.0, max_tokens=5)


@dataclass
class _Candidate:
    key: str
    instruction: str
    prompt_hash: str
    metadata: dict[str, Any]
    synthesis: asyncio.Task[_Synthesis] | None = None


@dataclass
class _Synthesis:
    is_classification: bool
    instances: list[Instance]
    labels: list[str]
    prompt_hash: str | None
    error: str | None
    classify_unparsed: bool


class _Tally:
    def __init__(self) -> None:
        self.kept_tasks = 0
        self.records_kept = 0
        self.records_rejected = 0
        self.by_reason: Counter[str] = Counter()

    def add(self, records: Iterable[GenRecord]) -> None:
        for record in records:
            if record.status == "kept":
                self.records_kept += 1
            else:
                self.records_rejected += 1
                self.by_reason[record.reason or "unknown"] += 1

    def event(self, round_no: int, records: Sequence[GenRecord], target: int) -> GenEvent:
        """A round's records and the job's progress after them: what a pipeline emits."""
        progress = GenProgress(
            round=round_no,
            target=target,
            kept=self.kept_tasks,
            records_kept=self.records_kept,
            records_rejected=self.records_rejected,
            rejected_by_reason=dict(self.by_reason),
        )
        return GenEvent(round=round_no, records=tuple(records), progress=progress)

    def result(
        self, *, rounds: int, stop_reason: StopReason, message: str, surplus: int
    ) -> SelfInstructResult:
        return SelfInstructResult(
            kept_tasks=self.kept_tasks,
            records_kept=self.records_kept,
            records_rejected=self.records_rejected,
            rejected_by_reason=dict(self.by_reason),
            rounds=rounds,
            stop_reason=stop_reason,
            message=message,
            surplus_tasks=surplus,
        )


class _Yield:
    """Candidates per instruction prompt screened so far (after a prior): how many of a round's prompts
    are sent ahead of its screening. It decides what is sent when, never what is screened or kept."""

    def __init__(self) -> None:
        self.prompts, self.candidates = 1, _PRIOR_CANDIDATES_PER_PROMPT

    def add(self, candidates: int) -> None:
        self.prompts += 1
        self.candidates += candidates

    def prompts_for(self, candidates: float) -> int:
        """Prompts expected to give ``candidates`` at the yield so far (0 for none)."""
        return max(0, math.ceil(candidates * self.prompts / self.candidates))


class _Asked:
    """A round's instruction prompts, all built from one pool and sent in order as the round needs them
    (:meth:`send`): ``answers`` are those of the first ``len(answers)`` prompts."""

    def __init__(self, number: int, pool: list[str], prompts: list[tuple[str, int]], calls: _Calls) -> None:
        self.number, self.pool, self.prompts, self.calls = number, pool, prompts, calls
        self.answers: list[asyncio.Task[Completion | None]] = []

    def send(self, upto: int, params: SelfInstructParams) -> None:
        """Ask the prompts before index ``upto`` that are not asked yet."""
        first = len(self.answers)
        if upto > first:
            self.answers += _ask_instructions(
                self.calls.gateway,
                self.number,
                self.prompts[first:upto],
                params,
                calls=self.calls,
                first_index=first,
            )


@dataclass
class _Round:
    """One round in flight: its prompts, their answers, and the screening that starts its tasks' calls."""

    number: int
    screen: _Screening
    screening: asyncio.Task[None]
    """Screening for the tasks the round was started for; see :func:`run_self_instruct`."""


class _Slots:
    """A counting semaphore with two queues: a free slot goes to the longest-waiting call of the first
    queue, and to the second's only when nobody waits in the first."""

    def __init__(self, n: int) -> None:
        self.free = n
        self.queues: tuple[deque[asyncio.Future[None]], deque[asyncio.Future[None]]] = (deque(), deque())

    async def acquire(self, *, first: bool) -> None:
        if self.free > 0 and not self.queues[0] and not self.queues[1]:
            self.free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self.queues[0 if first else 1]
        queue.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed the slot just as it was cancelled: pass it on
            elif waiter in queue:
                queue.remove(waiter)
            raise

    def release(self) -> None:
        for queue in self.queues:
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)  # the slot passes straight to it
                    return
        self.free += 1


class _Calls:
    """The pipeline's teacher calls: at most the gateway's concurrency admitted at once, and none after
    :meth:`close`. A call still waiting for admission when the run ends is never sent; one admitted
    (in flight at the gateway) is let finish, so its answer reaches the cache and the costs.

    Instruction prompts go ahead of tasks' calls waiting for a slot: each one's answer starts several
    tasks, and the next round's prompts would otherwise queue behind this round's tasks and leave the
    slots idle while their answers come back."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.slots = _Slots(gateway.concurrency_limit)
        self.closed = False
        self.tasks: list[asyncio.Task[Any]] = []

    def spawn(self, coro: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
        task = asyncio.ensure_future(coro)
        self.tasks.append(task)
        return task

    async def complete(
        self, prompt: str, *, purpose: str, sampling: Sampling, sample_index: int = 0, first: bool = False
    ) -> Completion | None:
        if self.closed:
            return None
        await self.slots.acquire(first=first)
        try:
            if self.closed:
                return None
            return await _complete_or_none(
                self.gateway, prompt, purpose=purpose, sampling=sampling, sample_index=sample_index
            )
        finally:
            self.slots.release()

    def close(self) -> None:
        self.closed = True

    async def drain(self) -> None:
        """Send nothing more and wait for what is in flight (its answers are cached and costed)."""
        self.close()
        while pending := [task for task in self.tasks if not task.done()]:
            await asyncio.gather(*pending, return_exceptions=True)
        for task in self.tasks:
            if not task.cancelled():
                task.exception()  # retrieved: a screened-ahead round's BudgetExceeded is not news

    async def abort(self) -> None:
        self.close()
        pending = [task for task in self.tasks if not task.done()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def run_self_instruct(
    *,
    gateway: Gateway,
    seeds: list[SeedTask],
    params: SelfInstructParams,
    emit: Callable[[GenEvent], None],
    should_stop: Callable[[], bool] = lambda: False,
    pool_extra: Sequence[str | tuple[str, str]] = (),
) -> SelfInstructResult:
    """Generate until ``params.target`` tasks are kept, the caller stops us, the budget or the teacher ends.

    ``pool_extra``: more instructions (e.g. the dataset's accepted records) that new instructions must not
    duplicate, each a text or a (key, text) pair: a rejected record's ``metadata["nearest"]`` is that key. A teacher that keeps failing raises :class:`TeacherUnavailable` (pause the job); a reached
    budget returns normally with ``stop_reason="budget"``.

    The order rule (what makes the kept set a function of the seed and the teacher's answers alone, not of
    timing or concurrency): new instructions are screened (rules, then ROUGE-L against the seeds,
    ``pool_extra`` and every instruction that passed before it) strictly in (round, prompt, item) order;
    round r's prompts are built from the tasks kept up to round r-2; round r's records are decided in
    prompt order after round r-1's and stop exactly at the target. Round r+1 is screened while round r's
    tasks are still being synthesised (that keeps the teacher busy across the boundary) whenever round r
    cannot reach the target even if every one of its candidates is kept; it then screens for what is left
    after counting them all (``target - kept - candidates``). Otherwise round r+1 waits for round r's
    outcome, as at the end of a job.
    """
    if not seeds:
        raise ValueError("Self-Instruct needs at least one seed task")
    human = [s.instruction for s in seeds]
    machine: list[str] = []
    index = NearDuplicateIndex(threshold=params.threshold)
    for n, seed in enumerate(seeds):
        index.add(seed.key or f"seed:{n}", seed.instruction)
    for n, extra in enumerate(pool_extra):
        key, text = extra if isinstance(extra, tuple) else (f"extra:{n}", extra)
        index.add(key, text)

    tally = _Tally()
    round_no = 0
    stale = 0
    surplus = 0
    stop_reason: StopReason = "target"
    message = ""
    calls = _Calls(gateway)

    asked_ahead: _Asked | None = None  # the next round's prompts, asked ahead (see below)
    last_started = -1
    # Candidates per screened prompt so far: how many of a round's prompts go out before it is screened.
    rate = _Yield()

    def ask(number: int, pool: list[str], want: float) -> _Asked:
        """Round ``number``'s prompts; those expected to give ``want`` tasks' candidates go out now, the
        rest as its screening finds them short (see :func:`_screen`)."""
        asked = _Asked(number, pool, _round_prompts(number, human=human, machine=pool, params=params), calls)
        asked.send(max(1, rate.prompts_for(_cap(math.ceil(want)))), params)
        return asked

    def start(number: int, pool: list[str], needed: int) -> _Round:
        nonlocal asked_ahead, last_started
        last_started = number
        ahead, asked_ahead = asked_ahead, None
        # Asked ahead, the prompts are the same (same round, same pool): their answers are used as they are.
        if ahead is None or (ahead.number, ahead.pool) != (number, pool):
            ahead = ask(number, pool, needed)
        screen = _Screening(ahead, gateway, index, params, needed, calls=calls, rate=rate)
        return _Round(number, screen, calls.spawn(screen.until(needed)))

    async def watch(number: int, screen: _Screening, needed: int, pool: list[str]) -> None:
        """While a round that can reach the target finishes: each task that gets no instance screens the
        next spare and starts its calls (spares cost nothing unless a task fails), and once too many failed
        for the round to reach the target, the next round's prompts go out at once."""
        nonlocal asked_ahead
        first_spare = min(screen.needed, len(screen.candidates))  # those before it are started
        tasks = {screen.start(cand): cand for _, cand in screen.candidates[:first_spare]}
        pending: set[asyncio.Task[_Synthesis]] = set(tasks)
        failed = 0
        while pending and not calls.closed:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.cancelled() or task.exception() is not None:
                    return  # the round fails as a whole; its own await reports why
                records = _task_records(tasks[task], task.result(), params=params, model="", round_no=number)
                if any(r.status == "kept" for r in records):
                    continue
                failed += 1
                spare = await screen.spare(first_spare + failed - 1)
                if spare is not None:  # started already if the round's own wait reached it meanwhile
                    synthesis = screen.start(spare)
                    tasks[synthesis] = spare
                    pending.add(synthesis)
            short = needed - (len(screen.candidates) - failed)
            if screen.finished and short > 0:
                if asked_ahead is None and last_started <= number and not calls.closed:
                    asked_ahead = ask(number + 1, pool, short)
                return

    # Round r's prompts are built from the machine pool as it stood before round r-1's tasks were added.
    # The one-round lag lets round r's instruction calls run during round r-1's instance calls, and it is
    # the same whether or not they overlapped, so the run stays deterministic.
    lagged_machine: list[str] = []
    current: _Round | None = None
    try:
        while tally.kept_tasks < params.target:
            if should_stop():
                stop_reason = "stopped"
                break
            if stale >= params.max_stale_rounds:
                stop_reason, message = "exhausted", f"{stale} rounds in a row kept nothing"
                break
            needed = params.target - tally.kept_tasks
            try:
                if current is None:
                    current = start(round_no, lagged_machine, needed)
                expected = params.batch_size * rate.candidates / rate.prompts
                if asked_ahead is None and needed > expected and not should_stop():
                    # At the yield so far this round will not reach the target: the next one's prompts
                    # (built from the same pool whenever it starts) go out now, behind this round's, so the
                    # slots that this round's last answers and tasks leave idle are not wasted; as many
                    # as the expected shortfall needs (its screening sends more if they fall short).
                    asked_ahead = ask(round_no + 1, list(machine), needed - expected)
                await current.screening
                screen = current.screen
                # More than it was started for if a task of the round before got no instance.
                await screen.need(needed)
                lagged_machine = list(machine)
                nxt: _Round | None = None
                left = needed - len(screen.candidates)
                if left > 0 and not should_stop():
                    # This round cannot reach the target: screen the next one while its tasks finish.
                    nxt = start(round_no + 1, lagged_machine, left)
                else:
                    # It can if enough of its tasks get an instance: start a spare task for each one
                    # that fails, and ask the next round's prompts the moment too many have failed.
                    calls.spawn(watch(round_no, screen, needed, lagged_machine))
                records, kept, spare = await _finish_round(
                    round_no, gateway, screen, needed=needed, params=params
                )
            except BudgetExceeded as exc:
                stop_reason, message = "budget", str(exc)
                break
            surplus += spare
            current = nxt
            tally.add(records)
            tally.kept_tasks += len(kept)
            machine.extend(kept)
            stale = 0 if kept else stale + 1
            emit(tally.event(round_no, records, params.target))
            round_no += 1
    except BaseException:
        await calls.abort()
        raise
    # Whatever was started and is not needed (the last round's spare tasks, a round screened ahead of a
    # stop) sends nothing more; calls already at the teacher finish, so every paid answer is cached.
    await calls.drain()
    return tally.result(rounds=round_no, stop_reason=stop_reason, message=message, surplus=surplus)


Position = tuple[int, int]


def _round_prompts(
    round_no: int, *, human: list[str], machine: list[str], params: SelfInstructParams
) -> list[tuple[str, int]]:
    return [
        build_instruction_prompt(
            human=human, machine=machine, rng=random.Random(f"{params.seed}:{round_no}:{i}"), params=params
        )
        for i in range(params.batch_size)
    ]


def _ask_instructions(
    gateway: Gateway,
    round_no: int,
    prompts: list[tuple[str, int]],
    params: SelfInstructParams,
    *,
    calls: _Calls | None = None,
    first_index: int = 0,
) -> list[asyncio.Task[Completion | None]]:
    """Send ``prompts``, the round's prompts from index ``first_index`` on."""
    calls = calls or _Calls(gateway)
    return [
        calls.spawn(
            calls.complete(
                prompt,
                purpose="self_instruct.instructions",
                sampling=params.sampling,
                sample_index=round_no * ROUND_STRIDE + i,
                first=True,
            )
        )
        for i, (prompt, _) in enumerate(prompts, start=first_index)
    ]


def _items(answer: Completion, next_number: int, api: str) -> list[str]:
    """The new instructions of one instruction prompt's answer, in list order."""
    text = answer.text
    if api == "completions":
        # A completion model continues right after the prompt's "9.", so its first item has no number.
        text = f"{next_number}. {text}"
    items = parse_numbered_list(text, truncated=answer.finish_reason == "length")
    return [_one_line(item) if "\n" not in item.strip() else item.strip() for item in items]


def _cap(needed: int) -> int:
    """Candidates a round that needs ``needed`` more tasks screens: those plus the slack."""
    return needed + max(_SLACK_MIN, math.ceil(needed * _SLACK_SHARE))


class _Screening:
    """Phase 1 of one round, resumable: rules and ROUGE-L on its new instructions, strictly in (prompt,
    item) order, only as far as the round needs (:meth:`until`), never past its cap.

    Each surviving candidate among the first ``needed`` has its classification and instance calls started
    at once (phase 2 overlaps phase 1). The slack past ``needed`` (spares for tasks whose instances all
    fail, up to the cap) is screened only when a task fails, and its calls start then: a round that reaches
    the target with no failed task screens, and asks prompts for, no spare at all. That changes nothing
    kept: spares come after every candidate the round needs, are never emitted unless needed, and when a
    round falls short all of its slack has been screened (each failure screens one) before the next round
    is, so later rounds see the same pool as if the whole cap had been screened at once.

    The round's prompts go out in order, as many as the candidates still wanted (plus a margin) need at the
    yield so far: before each answer is screened, the prompts asked and not yet screened must be expected
    to give them, else the next ones go out then. What is screened does not depend on when a prompt goes
    out: the first answers, in order, up to the candidates asked for.
    """

    def __init__(
        self,
        asked: _Asked,
        gateway: Gateway,
        index: NearDuplicateIndex,
        params: SelfInstructParams,
        needed: int,
        *,
        calls: _Calls,
        rate: _Yield,
    ) -> None:
        self.asked, self.gateway, self.index, self.params = asked, gateway, index, params
        self.calls, self.rate = calls, rate
        self.needed = needed
        """Candidates whose calls start as they are screened; the rest are spares."""
        self.cap = _cap(needed)
        self.rejected_at: dict[Position, GenRecord] = {}
        self.candidates: list[tuple[Position, _Candidate]] = []
        self.finished = False
        """No candidate is left to screen: the cap is reached, every prompt is read, or the run is over."""
        self._prompt = 0  # the next prompt whose answer is read
        self._items: list[str] = []  # the items of the answer being screened, and its cache key
        self._item = 0
        self._answer_key = ""
        self._yielded = 0  # candidates from the answer being screened
        self._lock = asyncio.Lock()

    async def until(self, count: int) -> None:
        """Screen on until ``count`` candidates (at most the cap) are found or none is left."""
        async with self._lock:
            while len(self.candidates) < min(count, self.cap) and not self.finished:
                if self._item < len(self._items):
                    self._screen_item(self._items[self._item])
                    self._item += 1
                    if self._item == len(self._items):
                        self.rate.add(self._yielded)  # a whole answer's yield
                        # Screening an answer is CPU work that never waits when the answers are all in:
                        # let the calls just started go out before the next answer is screened.
                        await asyncio.sleep(0)
                    continue
                await self._read(count)
            if len(self.candidates) >= self.cap:
                self.finished = True

    async def _read(self, count: int) -> None:
        """The next prompt's answer becomes the one being screened (sending it, and the prompts expected
        to give the rest of ``count``, if they are not asked yet)."""
        i, asked = self._prompt, self.asked
        if i >= len(asked.prompts):
            self.finished = True
            return
        wanted = min(count, self.cap) + _PROMPT_MARGIN - len(self.candidates)
        asked.send(i + max(1, self.rate.prompts_for(wanted)), self.params)
        answer = await asked.answers[i]
        self._prompt += 1
        if self.calls.closed:
            self.finished = True  # the run is over: what is screened now is never used
            return
        if answer is None:
            self.rate.add(0)
            return
        self._items = _items(answer, asked.prompts[i][1], self.gateway.teacher.api)
        self._item, self._answer_key, self._yielded = 0, answer.key, 0
        if not self._items:
            self.rate.add(0)

    def _screen_item(self, instruction: str) -> None:
        i, j = self._prompt - 1, self._item
        key = f"si:{self.asked.number}:{i}:{j}"
        screened = _screen_instruction(
            key,
            instruction,
            round_no=self.asked.number,
            prompt_hash=self._answer_key,
            model=self.gateway.model,
            index=self.index,
            params=self.params,
        )
        if isinstance(screened, GenRecord):
            self.rejected_at[(i, j)] = screened
            return
        cand = screened
        if len(self.candidates) < self.needed:
            self.start(cand)
        self.candidates.append(((i, j), cand))
        self._yielded += 1

    async def need(self, needed: int) -> None:
        """The round needs ``needed`` tasks after all (more than it was started for: a task of the round
        before failed): screen for them and start their calls, which the round now cannot do without."""
        if needed > self.needed:
            self.needed = needed
            for _, cand in self.candidates[:needed]:
                self.start(cand)
        await self.until(needed)

    async def spare(self, n: int) -> _Candidate | None:
        """Candidate ``n`` (in order), screened now if it is not yet; None if the round has no such one."""
        await self.until(n + 1)
        return self.candidates[n][1] if n < len(self.candidates) else None

    def start(self, cand: _Candidate) -> asyncio.Task[_Synthesis]:
        """Its calls, started unless they are."""
        if cand.synthesis is None:
            cand.synthesis = self.calls.spawn(_synthesize(self.calls, cand, self.params))
        return cand.synthesis


async def _finish_round(
    round_no: int, gateway: Gateway, screen: _Screening, *, needed: int, params: SelfInstructParams
) -> tuple[list[GenRecord], list[str], int]:
    """Phase 3: records in prompt order, each task's as soon as its calls are done (phase 2, started during
    phase 1); stop exactly at the target, screening on (one spare at a time) while tasks get no instance.
    Returns the records, the kept instructions and how many candidates were left past the target (their
    calls are not waited for here)."""
    model = gateway.model
    records: list[GenRecord] = []
    kept_instructions: list[str] = []
    done = used = 0  # positions and candidates done, in order; screening on adds positions after them only
    while len(kept_instructions) < needed:
        rejected_at, by_position = screen.rejected_at, dict(screen.candidates)
        positions = sorted(set(rejected_at) | set(by_position))
        if done == len(positions):
            if screen.finished:
                break
            await screen.until(len(screen.candidates) + 1)
            continue
        for pos in positions[done:]:
            if len(kept_instructions) >= needed:
                break
            done += 1
            if pos in rejected_at:
                records.append(rejected_at[pos])
                continue
            cand = by_position[pos]
            used += 1
            syn = await screen.start(cand)  # a spare's calls start when its turn comes, if not before
            task_records = _task_records(cand, syn, params=params, model=model, round_no=round_no)
            records.extend(task_records)
            if any(r.status == "kept" for r in task_records):
                kept_instructions.append(cand.instruction)
    return records, kept_instructions, len(screen.candidates) - used


async def _complete_or_none(
    gateway: Gateway, prompt: str, *, purpose: str, sampling: Sampling, sample_index: int = 0
) -> Completion | None:
    """A completion, or None when the teacher refused this one request (HTTP 400 and the like)."""
    try:
        return await gateway.complete(prompt, purpose=purpose, sampling=sampling, sample_index=sample_index)
    except TeacherUnavailable:
        raise
    except TeacherError:
        return None


async def _synthesize(calls: _Calls, cand: _Candidate, params: SelfInstructParams) -> _Synthesis:
    answer = await calls.complete(
        classification_prompt(cand.instruction, language=params.language),
        purpose="self_instruct.classify",
        sampling=CLASSIFY_SAMPLING,
    )
    verdict = parse_yes_no(answer.text) if answer else None
    result = await calls.complete(
        instance_prompt(cand.instruction, classification=bool(verdict), language=params.language),
        purpose="self_instruct.instances",
        sampling=params.instance_sampling,
    )
    return _synthesis(verdict, result)


def _screen_instruction(
    key: str,
    instruction: str,
    *,
    round_no: int,
    prompt_hash: str,
    model: str,
    index: NearDuplicateIndex,
    params: SelfInstructParams,
) -> GenRecord | _Candidate:
    """One new instruction through the rules, then ROUGE-L against every instruction that passed before it
    (it joins ``index`` if it passes too): its rejected record or the candidate task, the one screening
    the synchronous pipeline (:class:`_Screening`) and batch mode (app/pipeline/self_instruct_batch.py)
    share."""
    base = dict(
        key=key,
        instruction=instruction,
        input="",
        output="",
        status="rejected",
        source="self_instruct",
        teacher_model=model,
        round=round_no,
        prompt_hash=prompt_hash,
    )
    hits = evaluate(instruction=instruction, language=params.language, config=params.rules)
    if hits:
        return GenRecord(
            **base,  # type: ignore[arg-type]
            reason=hits[0].code,
            detail=hits[0].detail,
            metadata={"rules": [h.code for h in hits]},
        )
    decision = index.check_and_add(key, instruction)
    if not decision.kept:
        return GenRecord(
            **base,  # type: ignore[arg-type]
            reason="rouge_dup",
            detail=f"ROUGE-L {decision.score:.3f} with {decision.nearest}",
            metadata={"nearest": decision.nearest, "rouge_l": round(decision.score, 4)},
        )
    return _Candidate(
        key=key,
        instruction=instruction,
        prompt_hash=prompt_hash,
        metadata={"nearest": decision.nearest, "rouge_l": round(decision.score, 4)},
    )


def _synthesis(verdict: bool | None, result: Completion | None) -> _Synthesis:
    """A task's instances from its classification verdict (None: unreadable or failed) and its instances
    answer (None: failed); :func:`_synthesize` and batch mode make them with it."""
    is_cls = bool(verdict)
    if result is None:
        return _Synthesis(is_cls, [], [], None, "teacher_error", verdict is None)
    truncated = result.finish_reason == "length"
    if is_cls:
        labels, instances = parse_output_first(result.text, truncated=truncated)
    else:
        labels, instances = [], parse_input_first(result.text, truncated=truncated)
    return _Synthesis(is_cls, instances, labels, result.key, None, verdict is None)


def _task_records(
    cand: _Candidate, syn: _Synthesis, *, params: SelfInstructParams, model: str, round_no: int
) -> list[GenRecord]:
    meta = dict(cand.metadata)
    meta["instruction_prompt_hash"] = cand.prompt_hash
    if syn.labels:
        meta["labels"] = syn.labels
    if syn.classify_unparsed:
        meta["classification_unparsed"] = True

    def record(
        n: int | None,
        inst: Instance | None,
        status: Literal["kept", "rejected"],
        reason: str | None,
        **kw: Any,
    ) -> GenRecord:
        return GenRecord(
            key=cand.key if n is None else f"{cand.key}:{n}",
            instruction=cand.instruction,
            input=inst.input if inst else "",
            output=inst.output if inst else "",
            status=status,
            reason=reason,
            source="self_instruct",
            teacher_model=model,
            round=round_no,
            is_classification=syn.is_classification,
            label=inst.label if inst else None,
            prompt_hash=syn.prompt_hash or cand.prompt_hash,
            metadata=dict(meta),
            **kw,
        )

    if not syn.instances:
        return [record(None, None, "rejected", syn.error or "no_instances")]
    # Rules first, then the instance filters and the per-label choice among what the rules left: an
    # instance the rules reject is replaced by another of its label, so output-first balance holds.
    rule_hits: dict[int, Any] = {}
    if params.check_instances:
        for n, inst in enumerate(syn.instances):
            hits = evaluate(
                instruction=cand.instruction,
                input=inst.input.strip(),
                output=inst.output.strip(),
                language=params.language,
                config=params.rules,
            )
            if hits:
                rule_hits[n] = hits[0]
    eligible = [n for n in range(len(syn.instances)) if n not in rule_hits]
    decisions = dict(
        zip(
            eligible,
            filter_instances(
                [syn.instances[n] for n in eligible],
                max_per_task=params.max_instances_per_task,
                classification=syn.is_classification,
            ),
            strict=True,
        )
    )
    out: list[GenRecord] = []
    for n, raw in enumerate(syn.instances):
        if n in rule_hits:
            inst = Instance(raw.input.strip(), raw.output.strip(), raw.label)
            out.append(record(n, inst, "rejected", rule_hits[n].code, detail=rule_hits[n].detail))
            continue
        inst, reason = decisions[n].instance, decisions[n].reason
        out.append(record(n, inst, "kept" if reason is None else "rejected", reason))
    return out


@dataclass(frozen=True)
class SelfInstructEstimate:
    """A dry run's extrapolation to the whole job (see :func:`estimate_self_instruct_cost`)."""

    sampled_prompts: int
    instructions_per_prompt: float
    """New instructions per prompt that pass the rules and ROUGE-L against the seeds."""
    calls: int
    cost_usd: float
    tokens_in: int
    tokens_out: int


async def estimate_self_instruct_cost(
    *, gateway: Gateway, seeds: list[SeedTask], params: SelfInstructParams, prompts: int = 3
) -> SelfInstructEstimate:
    """Dry-run the job's own first prompts and extrapolate the cost of reaching ``params.target``.

    The dry run sends exactly the requests the job sends first, so with the job's response cache the
    job does not pay for them again.
    """
    human = [s.instruction for s in seeds]
    sampled = _round_prompts(0, human=human, machine=[], params=params)[: max(1, prompts)]
    replies = await gather_or_cancel(_ask_instructions(gateway, 0, sampled, params))
    answers = [a for a in replies if a is not None]
    index = NearDuplicateIndex(threshold=params.threshold)
    for n, seed in enumerate(seeds):
        index.add(seed.key or f"seed:{n}", seed.instruction)
    survivors: list[str] = []
    for n, (answer, (_, next_number)) in enumerate(zip(replies, sampled, strict=True)):
        if answer is None:
            continue
        text = f"{next_number}. {answer.text}" if gateway.teacher.api == "completions" else answer.text
        for j, item in enumerate(parse_numbered_list(text, truncated=answer.finish_reason == "length")):
            instruction = _one_line(item)
            rules_ok = not evaluate(instruction=instruction, language=params.language, config=params.rules)
            if rules_ok and index.check_and_add(f"dry:{n}:{j}", instruction).kept:
                survivors.append(instruction)
    per_prompt = max(len(survivors) / max(1, len(answers)), 0.5)
    # One task's own calls (classification, then instances), measured on a couple of survivors with the
    # very requests the job will send for them.
    task_in = task_out = 0.0
    for text in survivors[:2]:
        cls = await gateway.complete(
            classification_prompt(text, language=params.language),
            purpose="self_instruct.classify",
            sampling=CLASSIFY_SAMPLING,
        )
        inst = await gateway.complete(
            instance_prompt(text, classification=bool(parse_yes_no(cls.text)), language=params.language),
            purpose="self_instruct.instances",
            sampling=params.instance_sampling,
        )
        task_in += (cls.tokens_in + inst.tokens_in) / min(2, len(survivors))
        task_out += (cls.tokens_out + inst.tokens_out) / min(2, len(survivors))
    prompt_in = sum(a.tokens_in for a in answers) / max(1, len(answers))
    prompt_out = sum(a.tokens_out for a in answers) / max(1, len(answers))
    prompt_calls = math.ceil(params.target / per_prompt)
    tokens_in = round(prompt_calls * prompt_in + params.target * task_in)
    tokens_out = round(prompt_calls * prompt_out + params.target * task_out)
    return SelfInstructEstimate(
        sampled_prompts=len(answers),
        instructions_per_prompt=round(per_prompt, 2),
        calls=prompt_calls + 2 * params.target,
        cost_usd=gateway.cost(tokens_in, tokens_out),
        tokens_in=tokens_in,
        tokens_out=tokens_out,
    )
