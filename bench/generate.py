"""Self-Instruct throughput: our concurrent pipeline vs the reference's sequential loop, same run.

A fake OpenAI-compatible teacher runs in a separate process and answers every request after 300 ms
(so its CPU is not ours). Both sides use the same prompts, parsers, rules and ROUGE-L filter; the
reference sends one request at a time, as Alpaca's / Self-Instruct's scripts do; it runs in slices, one
after each of our measured jobs (its state carried over, so the slices add up to one run of the loop), so
that load drift on a shared machine hits both sides alike. Prints figures, then
one JSON line: {"kept_per_min", "reference_kept_per_min", "speedup", "cpu_ms_per_record", ...}.
``calls_per_kept_record`` and ``calls_by_purpose`` (the first measured job's teacher calls: instruction
prompts, classifications, instance calls) do not depend on the machine's load, unlike the speedup.

Baseline for our CPU: the bare ``openai`` client (``AsyncOpenAI().chat.completions.create`` under an
``asyncio.Semaphore`` of the same concurrency) sending the very requests one of our jobs sent, against the
same teacher, in the same run. ``cpu_ratio_to_bare_client`` is our CPU per teacher call (the whole job:
gateway, prompts, parsing, rules, ROUGE-L) over the bare client's CPU per call, on its default event loop
(``asyncio.run``) and, as ``cpu_ratio_to_bare_client_uvloop``, on uvloop like ours.

Our side runs its jobs in one process, as a worker does: a short warm-up job (the process's one-time
costs: lazy imports, the tokenizer's Unicode tables, the CA bundle), then ``--repeats`` measured jobs.
``kept_per_min`` and ``cpu_ms_per_record`` are the measured jobs' medians (CPU time on a shared VM varies
by ±30 % from run to run); ``cold_cpu_ms_per_record`` counts all jobs' CPU, the warm-up's included, over
all their records.

    .venv/bin/python bench/generate.py [--latency-ms 300] [--concurrency 32] [--target 400] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import openai

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.pipeline.instances import filter_instances, instance_prompt, parse_input_first, parse_output_first  # noqa: E402
from app.pipeline.listparse import parse_numbered_list, parse_yes_no  # noqa: E402
from app.pipeline.llm import Gateway, TeacherConfig, run_coroutine  # noqa: E402
from app.pipeline.rouge import NearDuplicateIndex  # noqa: E402
from app.pipeline.rules import evaluate  # noqa: E402
from app.pipeline.self_instruct import (  # noqa: E402
    GenEvent,
    SelfInstructParams,
    build_instruction_prompt,
    classification_prompt,
    load_seed_tasks,
    run_self_instruct,
)
from tests.fake_teacher import teacher_process  # noqa: E402

SEEDS = ROOT.parent / "shared" / "data" / "self-instruct" / "seed_tasks.jsonl"


def run_ours(
    base_url: str,
    *,
    concurrency: int,
    target: int,
    loop: str = "uvloop",
    requests: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One job; `requests`, if given, receives every request the gateway built (for the bare client)."""
    seeds = load_seed_tasks(SEEDS)
    teacher = TeacherConfig(name="bench", base_url=base_url, model="fake", max_concurrency=concurrency)
    params = SelfInstructParams(target=target, batch_size=concurrency, seed=1)
    kept = calls = 0
    purposes: Counter[str] = Counter()

    def emit(event: GenEvent) -> None:
        nonlocal kept
        kept = event.progress.records_kept

    async def main() -> None:
        nonlocal calls
        async with Gateway(teacher, on_call=lambda call: purposes.update((call.purpose,))) as gateway:
            if requests is not None:
                build = gateway.build_request

                def recording(*args: Any, **kwargs: Any) -> dict[str, Any]:
                    request = build(*args, **kwargs)
                    requests.append(request)
                    return request

                gateway.build_request = recording  # type: ignore[method-assign]
            await run_self_instruct(gateway=gateway, seeds=seeds, params=params, emit=emit)
            calls = gateway.usage.calls

    cpu0, wall0 = time.process_time(), time.perf_counter()
    if loop == "asyncio":
        asyncio.run(main())
    else:
        run_coroutine(main())  # as the jobs and the CLI run it
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    by_purpose = {purpose.removeprefix("self_instruct."): n for purpose, n in sorted(purposes.items())}
    return {"kept": kept, "wall_s": wall, "cpu_s": cpu, "calls": calls, "calls_by_purpose": by_purpose}


def run_bare_client(
    base_url: str, requests: list[dict[str, Any]], *, concurrency: int, loop: str
) -> dict[str, float]:
    """The same requests through the bare ``openai`` client, `concurrency` at a time, as its README shows."""
    client = openai.AsyncOpenAI(api_key="none", base_url=base_url, max_retries=0)
    slots = asyncio.Semaphore(concurrency)

    async def one(request: dict[str, Any]) -> str:
        async with slots:
            response = await client.chat.completions.create(
                model=request["model"],
                messages=request["messages"],
                temperature=request["temperature"],
                top_p=request["top_p"],
                max_tokens=request["max_tokens"],
                stop=request["stop"],
            )
            return response.choices[0].message.content or ""

    async def main() -> None:
        await asyncio.gather(*(one(r) for r in requests))
        await client.close()

    cpu0, wall0 = time.process_time(), time.perf_counter()
    if loop == "asyncio":
        asyncio.run(main())
    else:
        run_coroutine(main())
    return {
        "calls": len(requests),
        "cpu_s": time.process_time() - cpu0,
        "wall_s": time.perf_counter() - wall0,
    }


class Reference:
    """The reference's loop: one prompt, then each new task's classification and instances, one by one.

    Run in slices (:meth:`run`) interleaved with our jobs, so both sides see the same load on a shared
    machine; the loop's state (pool, index, prompt counter, the prompt's items not yet processed) carries
    over from slice to slice, so the slices add up to one continuous run of the loop.
    """

    def __init__(self, base_url: str, *, k: int = 3) -> None:
        self.client = openai.OpenAI(api_key="none", base_url=base_url, max_retries=0)
        self.params = SelfInstructParams(seed=2)
        self.k = k
        seeds = load_seed_tasks(SEEDS)
        self.human = [s.instruction for s in seeds]
        self.machine: list[str] = []
        self.index = NearDuplicateIndex(threshold=0.7)
        for s in seeds:
            self.index.add(s.key, s.instruction)
        self.n = 0
        self.kept = 0
        self.wall_s = 0.0
        self.items: list[str] = []

    def ask(self, prompt: str, temperature: float, max_tokens: int) -> tuple[str, str | None]:
        r = self.client.chat.completions.create(
            model="fake",
            messages=[{"role": "user", "content": prompt}],
            temperature=temperature,
            max_tokens=max_tokens,
        )
        return r.choices[0].message.content or "", r.choices[0].finish_reason

    def run(self, seconds: float) -> None:
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            if not self.items:
                prompt, _ = build_instruction_prompt(
                    human=self.human,
                    machine=self.machine,
                    rng=random.Random(f"ref:{self.n}"),
                    params=self.params,
                )
                self.n += 1
                text, finish = self.ask(prompt, 0.7, 1024)
                self.items = parse_numbered_list(text, truncated=finish == "length")
                continue
            item = self.items.pop(0)
            if (
                evaluate(instruction=item)
                or not self.index.check_and_add(f"r{self.n}:{item[:20]}", item).kept
            ):
                continue
            is_cls = bool(parse_yes_no(self.ask(classification_prompt(item, language="en"), 0.0, 5)[0]))
            answer, finish = self.ask(instance_prompt(item, classification=is_cls), 0.0, 600)
            if is_cls:
                instances = parse_output_first(answer, truncated=finish == "length")[1]
            else:
                instances = parse_input_first(answer, truncated=finish == "length")
            decisions = filter_instances(instances, max_per_task=self.k, classification=is_cls)
            good = [
                d
                for d in decisions
                if d.reason is None
                and not evaluate(instruction=item, input=d.instance.input, output=d.instance.output)
            ]
            self.kept += len(good)
            if good:
                self.machine.append(item)
        self.wall_s += time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--latency-ms", type=float, default=300)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--target", type=int, default=400, help="Tasks each measured job generates.")
    ap.add_argument("--repeats", type=int, default=3, help="Measured jobs; figures are their medians.")
    ap.add_argument("--warmup-target", type=int, default=40, help="Tasks of the warm-up job before them.")
    ap.add_argument("--event-loop", choices=("uvloop", "asyncio"), default="uvloop", help="Ours runs on.")
    ap.add_argument(
        "--reference-seconds", type=float, default=30, help="How long the sequential loop runs, all slices."
    )
    args = ap.parse_args()
    with teacher_process(latency_ms=args.latency_ms) as (url, _):
        ours = functools.partial(run_ours, url, concurrency=args.concurrency, loop=args.event_loop)
        warmup = ours(target=args.warmup_target)
        # The bare client warms up too (its lazy imports, the CA bundle), on the warm-up job's requests.
        warm_requests: list[dict[str, Any]] = []
        ours(target=args.warmup_target, requests=warm_requests)
        run_bare_client(url, warm_requests, concurrency=args.concurrency, loop="asyncio")
        requests: list[dict[str, Any]] = []
        # Our jobs and slices of the sequential loop alternate, so load drift on a shared machine hits both.
        reference = Reference(url)
        runs: list[dict[str, Any]] = []
        for i in range(args.repeats):
            runs.append(ours(target=args.target, requests=requests if i == 0 else None))
            reference.run(args.reference_seconds / args.repeats)
        bare = [
            run_bare_client(url, requests, concurrency=args.concurrency, loop=loop)
            for loop in ("asyncio", "uvloop", "asyncio", "uvloop")
        ]
        ref = {"kept": reference.kept, "wall_s": reference.wall_s}
    per_min = [r["kept"] / r["wall_s"] * 60 for r in runs]
    cpu_ms = [r["cpu_s"] * 1000 / max(1, r["kept"]) for r in runs]
    cpu_ms_per_call = statistics.median(r["cpu_s"] * 1000 / max(1, r["calls"]) for r in runs)
    bare_ms = {
        loop: statistics.median(b["cpu_s"] * 1000 / b["calls"] for b in bare[i::2])
        for i, loop in enumerate(("asyncio", "uvloop"))
    }
    kept_per_min, cpu_ms_per_record = statistics.median(per_min), statistics.median(cpu_ms)
    ref_per_min = ref["kept"] / ref["wall_s"] * 60
    all_cpu = warmup["cpu_s"] + sum(r["cpu_s"] for r in runs)
    cold_cpu_ms = all_cpu * 1000 / max(1, warmup["kept"] + sum(r["kept"] for r in runs))
    loop = event_loop() if args.event_loop == "uvloop" else "asyncio"
    print(f"teacher latency {args.latency_ms:.0f} ms, concurrency {args.concurrency}, loop {loop}")
    for i, r in enumerate(runs, 1):
        print(
            f"ours, job {i}: {r['kept']:.0f} kept records in {r['wall_s']:.1f} s -> {per_min[i - 1]:.0f}/min,"
            f" CPU {r['cpu_s']:.2f} s = {cpu_ms[i - 1]:.2f} ms per kept record"
        )
    print(
        f"ours: {cpu_ms_per_call:.3f} ms CPU per teacher call (whole job); bare openai client, same"
        f" {len(requests)} requests: {bare_ms['asyncio']:.3f} ms (asyncio), {bare_ms['uvloop']:.3f} ms (uvloop)"
    )
    print(
        f"reference: {ref['kept']:.0f} kept records in {ref['wall_s']:.1f} s -> {ref_per_min:.0f}/min"
        f" (in {args.repeats} slices, one after each of our jobs)"
    )
    print(
        f"warm-up job: {warmup['kept']:.0f} kept records, {warmup['cpu_s']:.2f} s CPU;"
        f" {cold_cpu_ms:.2f} ms per kept record over all jobs, warm-up included"
    )
    print(
        json.dumps(
            {
                "kept_per_min": round(kept_per_min, 1),
                "reference_kept_per_min": round(ref_per_min, 1),
                "speedup": round(kept_per_min / ref_per_min, 2) if ref_per_min else None,
                "cpu_ms_per_record": round(cpu_ms_per_record, 3),
                "cpu_ms_per_call": round(cpu_ms_per_call, 3),
                "bare_client_cpu_ms_per_call": round(bare_ms["asyncio"], 3),
                "bare_client_uvloop_cpu_ms_per_call": round(bare_ms["uvloop"], 3),
                "cpu_ratio_to_bare_client": round(cpu_ms_per_call / bare_ms["asyncio"], 3),
                "cpu_ratio_to_bare_client_uvloop": round(cpu_ms_per_call / bare_ms["uvloop"], 3),
                "calls_per_kept_record": round(runs[0]["calls"] / max(1, runs[0]["kept"]), 3),
                "calls": runs[0]["calls"],
                "calls_by_purpose": runs[0]["calls_by_purpose"],
                "cpu_ms_per_record_runs": [round(c, 3) for c in cpu_ms],
                "cold_cpu_ms_per_record": round(cold_cpu_ms, 3),
                "warmup_cpu_s": round(warmup["cpu_s"], 3),
                "kept_records": runs[0]["kept"],
                "latency_ms": args.latency_ms,
                "concurrency": args.concurrency,
                "event_loop": loop,
                "loadavg": [round(x, 2) for x in os.getloadavg()],
            }
        )
    )


def event_loop() -> str:
    """Whose event loop the jobs ran on: uvloop's where installed, else asyncio's."""

    async def probe() -> str:
        return type(asyncio.get_running_loop()).__module__.split(".")[0]

    return run_coroutine(probe())


if __name__ == "__main__":
    main()
