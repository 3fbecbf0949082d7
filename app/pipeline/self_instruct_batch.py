"""Self-Instruct in batch mode: the instruction rounds answered live, the instances stage through the
teacher's Batch API (issue 21).

Why only the instances stage. The instruction rounds depend on each other: a round's prompts draw their
examples from the tasks before it, and each new instruction is screened by ROUGE-L against every
instruction that passed before it; batched, every round would wait up to 24 h for the one before. The
instances stage is most of a job's calls (per task a classification call, then an instances call) and its
tasks do not depend on each other, so that is what goes into batches. A job (or the CLI) runs
:func:`run_self_instruct_batched` on every pass of app/pipeline/llm/batch.py's mechanism:

1. **Instruction phase**, live (``live``: a synchronous gateway on the job's cache): rounds of
   ``batch_size`` prompts, each new instruction screened as the synchronous pipeline screens it (the same
   rules and ROUGE-L, in (round, prompt, item) order: :func:`_screen_instruction`), until the phase holds
   what the target still needs plus the synchronous pipeline's slack for tasks that get no instance. A
   round's prompts draw their machine examples from every instruction screened in before it, not from
   the kept tasks as the synchronous pipeline does (which tasks are kept is known only once their batch
   is back): the kept set can therefore differ from a synchronous run's with the same seed.
2. **Instances stage**, through ``gateway`` (a BatchGateway): every candidate's classification call, then
   every candidate's instances call (output-first for classification tasks, input-first otherwise), each
   stage marked with :func:`end_stage`: a pass that finds classifications still pending stops there, so
   the instances batch is made from answered classifications only, and a pending call never passes for
   a failed one.
3. **Records** exactly as the synchronous pipeline makes them (``_task_records``), in order, until the
   target; candidates past it are not emitted (``surplus_tasks``). Short of the target (tasks that got no
   instance), another phase screens for the shortfall and another stage follows; ``max_stale_rounds``
   rounds in a row that keep nothing stop the run (``exhausted``), as they stop the synchronous one.

Every pass replays the phases from the cache: the same prompts, the same screening, so the final pass
(which writes) meets exactly the calls the collect passes had answered. An instruction call the teacher
refused is remembered in ``refused`` (kept by the caller across its passes) so that a later pass does not
get an answer an earlier one lacked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from app.pipeline.instances import instance_prompt
from app.pipeline.listparse import parse_yes_no
from app.pipeline.llm import BudgetExceeded, Completion, Gateway, Sampling, TeacherError, TeacherUnavailable
from app.pipeline.llm.batch import end_stage
from app.pipeline.rouge import NearDuplicateIndex
from app.pipeline.self_instruct import (
    CLASSIFY_SAMPLING,
    ROUND_STRIDE,
    GenEvent,
    GenRecord,
    Position,
    SeedTask,
    SelfInstructParams,
    SelfInstructResult,
    StopReason,
    _Candidate,
    _items,
    _round_prompts,
    _screen_instruction,
    _Synthesis,
    _synthesis,
    _Tally,
    _task_records,
    classification_prompt,
)


@dataclass
class _PhaseRound:
    number: int
    rejected_at: dict[Position, GenRecord]
    candidates: list[tuple[Position, _Candidate]]


@dataclass(frozen=True)
class _Answer:
    completion: Completion | None
    error: str | None = None
    budget: bool = False
    """The budget stopped this call (final pass: a call the budget kept out of the batches)."""


@dataclass(frozen=True)
class _Outcome:
    synthesis: _Synthesis | None
    """None: the budget stopped the task's calls."""
    error: str | None


async def run_self_instruct_batched(
    *,
    gateway: Gateway,
    live: Gateway,
    seeds: list[SeedTask],
    params: SelfInstructParams,
    emit: Callable[[GenEvent], None],
    should_stop: Callable[[], bool] = lambda: False,
    pool_extra: Sequence[str | tuple[str, str]] = (),
    refused: dict[str, str] | None = None,
) -> SelfInstructResult:
    """Generate until ``params.target`` tasks are kept (see the module docstring): instruction prompts
    through ``live``, the instances stage through ``gateway``. Returns as
    :func:`app.pipeline.self_instruct.run_self_instruct` does; a collect pass whose stage is waiting for a
    batch ends in :class:`app.pipeline.llm.batch.StagePending` (raised by ``end_stage``)."""
    if not seeds:
        raise ValueError("Self-Instruct needs at least one seed task")
    refused = {} if refused is None else refused
    human = [s.instruction for s in seeds]
    index = NearDuplicateIndex(threshold=params.threshold)
    for n, seed in enumerate(seeds):
        index.add(seed.key or f"seed:{n}", seed.instruction)
    for n, extra in enumerate(pool_extra):
        key, text = extra if isinstance(extra, tuple) else (f"extra:{n}", extra)
        index.add(key, text)
    screened: list[str] = []  # every instruction screened in, in order: the rounds' machine examples
    tally = _Tally()
    round_no = stale = surplus = 0
    stop_reason: StopReason = "target"
    message = ""
    while tally.kept_tasks < params.target:
        if should_stop():
            stop_reason = "stopped"
            break
        if stale >= params.max_stale_rounds:
            stop_reason, message = "exhausted", f"{stale} rounds in a row kept nothing"
            break
        needed = params.target - tally.kept_tasks
        rounds, over_budget = await _instruction_phase(
            live=live,
            first=round_no,
            stale=stale,
            cap=needed + math.ceil(needed * params.batch_spares),
            human=human,
            screened=screened,
            index=index,
            params=params,
            refused=refused,
            should_stop=should_stop,
        )
        round_no += len(rounds)
        if should_stop():
            stop_reason = "stopped"
            break
        candidates = [cand for r in rounds for _, cand in r.candidates]
        outcomes = await _instances_stage(gateway, candidates, params)
        for r in rounds:
            if tally.kept_tasks >= params.target:
                surplus += len(r.candidates)
                continue
            records, kept, left, budget_stop = _round_records(r, outcomes, params, gateway.model, tally)
            surplus += left
            tally.add(records)
            stale = 0 if kept else stale + 1
            emit(tally.event(r.number, records, params.target))
            if budget_stop:
                over_budget = over_budget or "the budget stopped the batch submission"
                break
        if over_budget is not None and tally.kept_tasks < params.target:
            stop_reason, message = "budget", over_budget
            break
    return tally.result(rounds=round_no, stop_reason=stop_reason, message=message, surplus=surplus)


async def _instruction_phase(
    *,
    live: Gateway,
    first: int,
    stale: int,
    cap: int,
    human: list[str],
    screened: list[str],
    index: NearDuplicateIndex,
    params: SelfInstructParams,
    refused: dict[str, str],
    should_stop: Callable[[], bool],
) -> tuple[list[_PhaseRound], str | None]:
    """Rounds of instruction prompts, answered live and screened in order, until ``cap`` candidates (or
    ``max_stale_rounds`` rounds in a row without one, counting the ``stale`` rounds before, or a stop).
    Returns the rounds and, if the budget ended the phase, why (that round is dropped, as a synchronous
    round cut by the budget is)."""
    rounds: list[_PhaseRound] = []
    found = 0
    empty = stale
    number = first
    while found < cap and empty < params.max_stale_rounds and not should_stop():
        prompts = _round_prompts(number, human=human, machine=list(screened), params=params)
        replies = await asyncio.gather(
            *(
                _ask_live(live, prompt, number * ROUND_STRIDE + i, params, refused)
                for i, (prompt, _) in enumerate(prompts)
            ),
            return_exceptions=True,  # every call ends (its answer cached) before the phase decides
        )
        for reply in replies:
            if isinstance(reply, TeacherUnavailable):
                raise reply
        over = next((r for r in replies if isinstance(r, BudgetExceeded)), None)
        if over is not None:
            return rounds, str(over)
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        rejected_at: dict[Position, GenRecord] = {}
        candidates: list[tuple[Position, _Candidate]] = []
        for i, answer in enumerate(replies):
            if found + len(candidates) >= cap:
                break
            if answer is None:
                continue
            assert isinstance(answer, Completion)
            for j, instruction in enumerate(_items(answer, prompts[i][1], live.teacher.api)):
                if found + len(candidates) >= cap:
                    break
                screened_item = _screen_instruction(
                    f"si:{number}:{i}:{j}",
                    instruction,
                    round_no=number,
                    prompt_hash=answer.key,
                    model=live.model,
                    index=index,
                    params=params,
                )
                if isinstance(screened_item, GenRecord):
                    rejected_at[(i, j)] = screened_item
                else:
                    candidates.append(((i, j), screened_item))
        screened.extend(cand.instruction for _, cand in candidates)
        rounds.append(_PhaseRound(number, rejected_at, candidates))
        found += len(candidates)
        empty = 0 if candidates else empty + 1
        number += 1
    return rounds, None


async def _ask_live(
    live: Gateway, prompt: str, sample_index: int, params: SelfInstructParams, refused: dict[str, str]
) -> Completion | None:
    """An instruction prompt's answer, or None when the teacher refused it (in this pass or an earlier
    one of the caller's: see ``refused``)."""
    memo = f"{sample_index}:{prompt}"
    if memo in refused:
        return None
    try:
        return await live.complete(
            prompt, purpose="self_instruct.instructions", sampling=params.sampling, sample_index=sample_index
        )
    except TeacherUnavailable:
        raise
    except TeacherError as exc:
        refused[memo] = str(exc)
        return None


async def _ask_batched(gateway: Gateway, prompt: str, *, purpose: str, sampling: Sampling) -> _Answer:
    try:
        return _Answer(await gateway.complete(prompt, purpose=purpose, sampling=sampling))
    except TeacherUnavailable:
        raise
    except TeacherError as exc:  # failed in every batch it went into (or deferred, in a collect pass)
        return _Answer(None, error=str(exc))
    except BudgetExceeded as exc:
        return _Answer(None, error=str(exc), budget=True)


async def _instances_stage(
    gateway: Gateway, candidates: list[_Candidate], params: SelfInstructParams
) -> dict[str, _Outcome]:
    """Every candidate's classification (one stage), then every candidate's instances (the next), by key."""
    classified = await asyncio.gather(
        *(
            _ask_batched(
                gateway,
                classification_prompt(cand.instruction, language=params.language),
                purpose="self_instruct.classify",
                sampling=CLASSIFY_SAMPLING,
            )
            for cand in candidates
        )
    )
    end_stage(gateway)
    verdicts = [parse_yes_no(a.completion.text) if a.completion else None for a in classified]

    async def instances(cand: _Candidate, cls: _Answer, verdict: bool | None) -> _Answer:
        if cls.budget:
            return cls  # the synchronous pipeline would not have gone on to its instances either
        return await _ask_batched(
            gateway,
            instance_prompt(cand.instruction, classification=bool(verdict), language=params.language),
            purpose="self_instruct.instances",
            sampling=params.instance_sampling,
        )

    answered = await asyncio.gather(
        *(instances(c, a, v) for c, a, v in zip(candidates, classified, verdicts, strict=True))
    )
    end_stage(gateway)
    return {
        cand.key: _Outcome(None if ans.budget else _synthesis(verdict, ans.completion), ans.error)
        for cand, ans, verdict in zip(candidates, answered, verdicts, strict=True)
    }


def _round_records(
    r: _PhaseRound, outcomes: dict[str, _Outcome], params: SelfInstructParams, model: str, tally: _Tally
) -> tuple[list[GenRecord], int, int, bool]:
    """One round's records in (prompt, item) order, until the target (``tally.kept_tasks`` counts the
    tasks kept here). Returns them, the tasks kept, the candidates left past the target and whether the
    budget stopped a task (the records before it stand)."""
    by_position = dict(r.candidates)
    positions = sorted(set(r.rejected_at) | set(by_position))
    records: list[GenRecord] = []
    kept = 0
    for n, pos in enumerate(positions):
        if tally.kept_tasks >= params.target:
            return records, kept, sum(p in by_position for p in positions[n:]), False
        if pos in r.rejected_at:
            records.append(r.rejected_at[pos])
            continue
        cand = by_position[pos]
        outcome = outcomes[cand.key]
        if outcome.synthesis is None:
            return records, kept, 0, True
        task = _task_records(cand, outcome.synthesis, params=params, model=model, round_no=r.number)
        if outcome.synthesis.error is not None and outcome.error:
            # The reason stays the synchronous one (teacher_error); the detail says which batch failed it.
            task = [dataclasses.replace(rec, detail=outcome.error[:500]) for rec in task]
        records.extend(task)
        if any(rec.status == "kept" for rec in task):
            kept += 1
            tally.kept_tasks += 1
    return records, kept, 0, False
