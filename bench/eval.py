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
* ``generation``: answer tokens/s of the evaluation generator (trainer.infer.iter_completions: prompts
  sorted by length, left-padded batches, KV cache) against ``trainer.infer.generate`` one prompt at a time,
  same prompts, same run, on a random-weight tiny Llama (CPU, or the GPU when there is one); see
  :func:`section_generation`.

Prompts: MT-Bench's 80 first-turn questions (``../shared/data/fastchat/mt_bench_question.jsonl``) when
present, else generated ones; three systems' answers are made up from the question (lengths differ, so the
fake's default "longer answer wins" judge gives non-trivial win rates).

    .venv/bin/python bench/eval.py [--only judge] [--latency-ms 300] [--concurrency 32] [--repeats 3]
    .venv/bin/python bench/eval.py --only generation [--gen-prompts 64] [--gen-batch-size 16]

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


# --------------------------------------------------------------------------------------------------
# generation: the batched generator of evaluations against one prompt at a time

ALPACA_EVAL = ROOT.parent / "shared" / "data" / "alpaca_eval" / "gpt4_1106_preview.model_outputs.json"


def pick_stop_token(rows: list[list[int]], max_new: int) -> int:
    """A token the random model does say, chosen so that answers stopping at it have lengths spread evenly
    from 1 to max_new (the smallest Kolmogorov distance to uniform), as real answers vary."""

    def distance(token: int) -> float:
        lengths = sorted(row.index(token) + 1 if token in row else max_new for row in rows)
        return max(abs((i + 1) / len(lengths) - n / max_new) for i, n in enumerate(lengths))

    return min(sorted({t for row in rows for t in row}), key=distance)


def batch_rows(prompt_ids: list[list[int]], batch_size: int) -> list[list[int]]:
    """The prompt indices of each batch, as iter_completions forms them (longest prompts first)."""
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def section_generation(args: argparse.Namespace) -> dict[str, Any]:
    """Answer tokens/s: trainer.infer.iter_completions (sorted, left-padded batches, KV cache) against
    trainer.infer.generate with batch_size=1 (one prompt per model.generate call), same prompts, same run.

    A random-weight tiny Llama (bench/train.py's "tiny" shape, or --gen-shape) with a BPE trained on
    AlpacaEval; prompts are AlpacaEval instructions in the trainer's alpaca format. Two cases: every answer
    runs to --gen-max-new-tokens ("fixed"), and answers that stop at spread-out lengths ("variable": a
    token the model says often is made a stop token), where a batch waits for its longest answer. Greedy
    both ways; the section checks that the answers are identical. Tokens counted: answer tokens before
    the stop token, the same count for both sides. Each side runs --gen-repeats times, alternated; the
    medians are reported.
    """
    import dataclasses
    import tempfile

    import torch

    from bench.train import build_tokenizer, save_random_model
    from trainer.formats import build_format
    from trainer.infer import encode_prompts, generate, iter_completions
    from trainer.methods import load_base_model, load_tokenizer

    torch.set_num_threads(args.gen_threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    records = json.loads(ALPACA_EVAL.read_text(encoding="utf-8"))
    prompts = [r["instruction"] for r in records[: args.gen_prompts]]
    corpus = [{"instruction": r["instruction"], "input": "", "output": r["output"]} for r in records]
    max_new = args.gen_max_new_tokens
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        torch.manual_seed(0)  # the same random model, hence the same answers, in every run
        n_params = save_random_model(
            model_dir, args.gen_shape, build_tokenizer(corpus, 2048), dtype=torch.float32
        )
        tokenizer = load_tokenizer(model_dir, local_only=True)
        model = load_base_model(model_dir, dtype=torch.float32, attn_implementation="sdpa").to(device).eval()
    fmt = build_format("alpaca", tokenizer)
    prompt_ids = encode_prompts(fmt, tokenizer, prompts)

    def batched(f: Any) -> tuple[list[list[int]], list[str], float, float]:
        rows: list[list[int]] = [[] for _ in prompts]
        texts = [""] * len(prompts)
        cpu, started = time.process_time(), time.perf_counter()
        for batch in iter_completions(
            model, tokenizer, f, prompt_ids, max_new_tokens=max_new, batch_size=args.gen_batch_size
        ):
            for c in batch:
                rows[c.index], texts[c.index] = c.token_ids, c.text
        return rows, texts, time.perf_counter() - started, time.process_time() - cpu

    def one_at_a_time(f: Any) -> tuple[list[str], float, float]:
        cpu, started = time.process_time(), time.perf_counter()
        texts = generate(model, tokenizer, f, prompts, max_new_tokens=max_new, batch_size=1)
        return texts, time.perf_counter() - started, time.process_time() - cpu

    generate(model, tokenizer, fmt, prompts[:2], max_new_tokens=4, batch_size=2)  # warm-up
    cases: dict[str, Any] = {}
    fixed_rows: list[list[int]] = []
    for case in ("fixed", "variable"):
        f = fmt
        if case == "variable":
            stop = pick_stop_token(fixed_rows, max_new)
            f = dataclasses.replace(
                fmt, stop_tokens=(*fmt.stop_tokens, tokenizer.convert_ids_to_tokens(stop))
            )
        # alternated, medians: the box is shared and its load moves within seconds
        batched_times, single_times, batched_cpu, single_cpu = [], [], [], []
        for _ in range(args.gen_repeats):
            rows, texts, seconds, cpu_s = batched(f)
            batched_times.append(seconds)
            batched_cpu.append(cpu_s)
            single_texts, seconds, cpu_s = one_at_a_time(f)
            single_times.append(seconds)
            single_cpu.append(cpu_s)
        batched_s, single_s = statistics.median(batched_times), statistics.median(single_times)
        cpu_speedup = statistics.median(single_cpu) / statistics.median(batched_cpu)
        if case == "fixed":
            fixed_rows = rows
        tokens = sum(len(r) for r in rows)
        lengths = sorted(len(r) for r in rows)
        cases[case] = {
            "answer_tokens": tokens,
            "answer_len_min_median_max": [lengths[0], lengths[len(lengths) // 2], lengths[-1]],
            "batched_tokens_per_s": round(tokens / batched_s, 1),
            "one_at_a_time_tokens_per_s": round(tokens / single_s, 1),
            "speedup": round(single_s / batched_s, 2),
            # CPU seconds of this process: what the two sides cost, less moved by the others' load
            "cpu_speedup": round(cpu_speedup, 2),
            "batch_steps": sum(
                max(len(rows[i]) for i in b) for b in batch_rows(prompt_ids, args.gen_batch_size)
            ),
            "batched_s": [round(x, 2) for x in batched_times],
            "one_at_a_time_s": [round(x, 2) for x in single_times],
            "identical": texts == single_texts,
        }
        c = cases[case]
        print(
            f"generation ({case} lengths {c['answer_len_min_median_max']}): {len(prompts)} prompts,"
            f" {tokens} answer tokens; batched x{args.gen_batch_size}: {c['batched_tokens_per_s']} tok/s"
            f" ({batched_s:.1f} s), one at a time: {c['one_at_a_time_tokens_per_s']} tok/s ({single_s:.1f} s);"
            f" speedup {c['speedup']}x (CPU time {c['cpu_speedup']}x); identical answers: {c['identical']}"
        )
    try:
        import vllm  # noqa: F401

        vllm_note = "installed, not benchmarked here"
    except ImportError:
        vllm_note = "not installed"
    return {
        **cases,
        "speedup": cases["variable"]["speedup"],
        "prompts": len(prompts),
        "max_new_tokens": max_new,
        "batch_size": args.gen_batch_size,
        "shape": args.gen_shape,
        "params": n_params,
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "torch_threads": args.gen_threads,
        "vllm": vllm_note,
    }


SECTIONS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "judge": section_judge,
    "generation": section_generation,
}


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
    ap.add_argument("--gen-prompts", type=int, default=64, help="generation: AlpacaEval prompts answered.")
    ap.add_argument("--gen-max-new-tokens", type=int, default=64)
    ap.add_argument("--gen-batch-size", type=int, default=16)
    ap.add_argument("--gen-shape", default="tiny", help="generation: a model shape from bench/train.py.")
    ap.add_argument("--gen-repeats", type=int, default=3, help="generation: timed runs per side (median).")
    ap.add_argument("--gen-threads", type=int, default=1, help="generation: torch threads (CPU).")
    args = ap.parse_args()
    results: dict[str, Any] = {}
    for name in args.only or list(SECTIONS):
        results[name] = SECTIONS[name](args)
    results["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    results["cpus"] = os.cpu_count()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
