"""Evaluation benchmarks, one function per section (``--only SECTION`` runs one); one JSON line last.

Sections:

* ``judge``: pairwise judging throughput. The fake OpenAI-compatible teacher runs in a process of its own
  and answers every request after 300 ms. Our side: :func:`app.pipeline.pairwise.run_pairwise` through the
  gateway at concurrency 32, as an evaluation job runs it (both orders of every comparison, parsing, the
  tie rule); reference: the very same code at concurrency 1, i.e. one judge call at a time, for a fixed
  number of comparisons, in the same run. The ratio of their call rates is the figure to read: the VM is
  shared, and absolute rates move with its load (``loadavg`` is in the JSON). Then the same concurrent run
  with a slow path: on every tenth prompt one system's answer makes the judge write something unreadable,
  so those comparisons are asked again (two calls in a row per order) and end unparseable, as real judges
  do now and then; a barrier per batch would idle the other slots while they finish. Also timed: the summary
  (win rates with bootstrap and length-controlled intervals) over the concurrent run's verdicts.

Prompts: MT-Bench's 80 first-turn questions (``../shared/data/fastchat/mt_bench_question.jsonl``) when
present, else generated ones; three systems' answers are made up from the question (lengths differ, so the
fake's default "longer answer wins" judge gives non-trivial win rates).

    .venv/bin/python bench/eval.py [--only judge] [--latency-ms 300] [--concurrency 32] [--repeats 3]

A new section is a function ``section_NAME(args) -> dict`` registered in ``SECTIONS``; its figures go in
the last JSON line under its name.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.pipeline.llm import Gateway, TeacherConfig, run_coroutine  # noqa: E402
from app.pipeline.pairwise import (  # noqa: E402
    EvalPrompt,
    PairVerdict,
    PairwiseParams,
    all_pairs,
    plan_comparisons,
    run_pairwise,
    summarise_pairwise,
)
from tests.fake_teacher import teacher_process  # noqa: E402

UNREADABLE = "UNREADABLE-FOR-THE-JUDGE"

MT_BENCH = ROOT.parent / "shared" / "data" / "fastchat" / "mt_bench_question.jsonl"
SYSTEMS = ("tuned", "base", "teacher")


def script_unreadable(url: str) -> None:
    """Have the fake judge answer every prompt that shows an answer containing UNREADABLE unreadably."""
    body = json.dumps({"match": UNREADABLE, "text": "Both answers have merit.", "times": None}).encode()
    request = urllib.request.Request(
        url.removesuffix("/v1") + "/admin/responses", data=body, headers={"Content-Type": "application/json"}
    )
    urllib.request.urlopen(request, timeout=10).read()


def with_unreadable(prompts: list[EvalPrompt], every: int = 10) -> list[EvalPrompt]:
    return [
        p.model_copy(update={"answers": {**p.answers, "base": p.answers["base"] + " " + UNREADABLE}})
        if i % every == 0
        else p
        for i, p in enumerate(prompts)
    ]


def load_prompts() -> list[EvalPrompt]:
    """MT-Bench first turns with categories, each answered by three made-up systems of different verbosity."""
    questions: list[tuple[str, str, str]] = []
    if MT_BENCH.is_file():
        for line in MT_BENCH.read_text(encoding="utf-8").splitlines():
            if line.strip():
                q = json.loads(line)
                questions.append((str(q["question_id"]), q["turns"][0], q.get("category") or "other"))
    else:
        questions = [(str(i), f"Explain idea number {i} to a newcomer.", f"c{i % 8}") for i in range(80)]
    prompts = []
    for qid, text, category in questions:
        words = text.split()
        answers = {
            "tuned": " ".join(words[: 8 + len(words) % 7])
            + ". "
            + "A focused answer. " * (2 + len(words) % 5),
            "base": "Sure. " + " ".join(words[:5]) + "...",
            "teacher": "Here is a thorough answer. " + text + " " + "Detail follows. " * (3 + len(words) % 4),
        }
        prompts.append(EvalPrompt(id=qid, text=text, category=category, answers=answers))
    return prompts


def judge_once(
    base_url: str, prompts: list[EvalPrompt], *, concurrency: int, limit: int | None = None
) -> dict[str, Any]:
    """One pairwise run over all pairs of SYSTEMS (the first ``limit`` comparisons if given)."""
    teacher = TeacherConfig(name="bench", base_url=base_url, model="fake", max_concurrency=concurrency)
    pairs = all_pairs(SYSTEMS)
    if limit is not None:
        # run_pairwise judges prompts x pairs in plan order: keep whole prompts until ``limit`` comparisons
        per_prompt = len(pairs)
        prompts = prompts[: max(1, limit // per_prompt)]
    params = PairwiseParams()  # as a job runs it: the default batch of comparisons
    verdicts: list[PairVerdict] = []
    calls = 0

    async def main() -> None:
        nonlocal calls
        async with Gateway(teacher) as gateway:
            await run_pairwise(
                gateway=gateway, prompts=prompts, pairs=pairs, params=params, emit=verdicts.extend
            )
            calls = gateway.usage.calls

    cpu0, wall0 = time.process_time(), time.perf_counter()
    run_coroutine(main())
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {
        "comparisons": len(verdicts),
        "calls": calls,
        "wall_s": wall,
        "cpu_s": cpu,
        "decided": sum(v.status == "decided" for v in verdicts),
        "verdicts": verdicts,
        "prompts": prompts,
    }


def section_judge(args: argparse.Namespace) -> dict[str, Any]:
    prompts = load_prompts()
    planned = len(plan_comparisons(prompts, all_pairs(SYSTEMS)))
    with teacher_process(latency_ms=args.latency_ms) as (url, _):
        judge_once(url, prompts, concurrency=args.concurrency, limit=12)  # warm-up: imports, connections
        runs = [judge_once(url, prompts, concurrency=args.concurrency) for _ in range(args.repeats)]
        sequential = judge_once(url, prompts, concurrency=1, limit=args.sequential_comparisons)
        script_unreadable(url)
        slow = judge_once(url, with_unreadable(prompts), concurrency=args.concurrency)
    rates = [r["calls"] / r["wall_s"] for r in runs]
    rate = statistics.median(rates)
    seq_rate = sequential["calls"] / sequential["wall_s"]
    cpu_ms_per_call = statistics.median(r["cpu_s"] * 1000 / max(1, r["calls"]) for r in runs)
    started = time.perf_counter()
    report = summarise_pairwise(runs[0]["prompts"], runs[0]["verdicts"])
    summary_s = time.perf_counter() - started
    print(
        f"judge: {len(prompts)} prompts x {len(all_pairs(SYSTEMS))} pairs = {planned} comparisons,"
        f" {planned * 2} calls; teacher latency {args.latency_ms:.0f} ms"
    )
    for i, r in enumerate(runs, 1):
        print(
            f"  concurrency {args.concurrency}, run {i}: {r['calls']} calls in {r['wall_s']:.2f} s"
            f" -> {rates[i - 1]:.1f} calls/s, {r['decided']}/{r['comparisons']} decided,"
            f" CPU {r['cpu_s'] * 1000 / max(1, r['calls']):.2f} ms per call"
        )
    print(
        f"  sequential: {sequential['calls']} calls in {sequential['wall_s']:.2f} s -> {seq_rate:.2f} calls/s;"
        f" speedup {rate / seq_rate:.1f}x"
    )
    slow_rate = slow["calls"] / slow["wall_s"]
    print(
        f"  with every tenth prompt's verdicts unreadable: {slow['calls']} calls in {slow['wall_s']:.2f} s"
        f" -> {slow_rate:.1f} calls/s, {slow['decided']}/{slow['comparisons']} decided"
    )
    print(f"  summary of {len(report.win_rates)} win rates (bootstrap + length control): {summary_s:.2f} s")
    return {
        "calls_per_s": round(rate, 2),
        "sequential_calls_per_s": round(seq_rate, 3),
        "speedup": round(rate / seq_rate, 2),
        "comparisons_per_min": round(rate / 2 * 60, 1),
        "calls_per_s_runs": [round(x, 2) for x in rates],
        "cpu_ms_per_call": round(cpu_ms_per_call, 3),
        "with_retries_calls_per_s": round(slow_rate, 2),
        "with_retries_unparseable": slow["comparisons"] - slow["decided"],
        "summary_s": round(summary_s, 3),
        "win_rates_summarised": len(report.win_rates),
        "comparisons": planned,
        "sequential_calls": sequential["calls"],
        "latency_ms": args.latency_ms,
        "concurrency": args.concurrency,
    }


SECTIONS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {"judge": section_judge}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument(
        "--only", choices=sorted(SECTIONS), action="append", help="Run only this section (repeatable)."
    )
    ap.add_argument("--latency-ms", type=float, default=300)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="Concurrent judge runs; the median is reported.")
    ap.add_argument(
        "--sequential-comparisons", type=int, default=24, help="Comparisons judged one call at a time."
    )
    args = ap.parse_args()
    results: dict[str, Any] = {}
    for name in args.only or list(SECTIONS):
        results[name] = SECTIONS[name](args)
    results["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    results["cpus"] = os.cpu_count()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
