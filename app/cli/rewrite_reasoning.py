"""`instructforge generate rewrite | reasoning`: response rewriting and reasoning traces, files to files,
without the service (docs/generation.md)."""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable
from typing import Any

from app.cli.batch import add_batch_option
from app.cli.output import Progress, Row, reason_rows
from app.pipeline.answers import reference_answer
from app.pipeline.llm import Gateway, Sampling
from app.pipeline.reasoning import (
    ReasoningItem,
    ReasoningParams,
    ReasoningResult,
    ReasoningSummary,
    run_reasoning,
)
from app.pipeline.rewrite import (
    PRESETS,
    RewriteItem,
    RewriteParams,
    RewriteResult,
    RewriteSummary,
    goal_text,
    run_rewrite,
)

REASONS = {"mismatched": "answer_mismatch", "unparseable": "answer_unparseable"}


def add_rewrite_reasoning(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    common: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Register `generate rewrite` and `generate reasoning`."""
    rw = sub.add_parser(
        "rewrite",
        help="rewrite the answers of Alpaca-style records towards a goal",
        description="The teacher rewrites each record's answer towards a goal (a preset, your own "
        "instruction, or both); a reply that is empty, a refusal or the answer unchanged is no rewrite.",
    )
    rw.add_argument("--input", required=True, help="Alpaca-style JSON/JSONL (instruction, input, output)")
    rw.add_argument(
        "--preset",
        choices=[*PRESETS, "custom"],
        default="complete",
        help="the goal: more complete, better formatted, concise, a friendly or formal tone, a translation, "
        "or custom (only --instruction) (default: %(default)s)",
    )
    rw.add_argument(
        "--instruction", default=None, help="your own goal in words (required for custom; added to a preset)"
    )
    rw.add_argument(
        "--target-language", default=None, help="the language to translate into, for --preset translate"
    )
    rw.add_argument(
        "--temperature", type=float, default=0.3, help="sampling temperature (default: %(default)s)"
    )
    common(rw)
    add_batch_option(rw)
    rw.set_defaults(func=cmd_rewrite)

    rs = sub.add_parser(
        "reasoning",
        help="step-by-step solutions kept only when their final answer matches the reference",
        description="The teacher solves each record's question step by step; a solution is kept only when "
        "its final answer matches the record's reference answer (numbers compared as numbers, else "
        "normalised text; docs/generation.md).",
    )
    rs.add_argument(
        "--input", required=True, help="Alpaca-style JSON/JSONL whose output holds or is the reference answer"
    )
    rs.add_argument(
        "--reference-from",
        choices=["auto", "marker", "last_number", "output"],
        default="auto",
        help="where the reference answer is read in the output: after '#### ' or another final-answer "
        "marker, its last number (GSM8K in Alpaca form), the whole output, or auto (marker, else a short "
        "output whole, else its last number) (default: %(default)s)",
    )
    common(rs)
    add_batch_option(rs)
    rs.set_defaults(func=cmd_reasoning)


def cmd_rewrite(args: argparse.Namespace) -> int:
    from app.cli.generate import Summary, _read_rows, _run, _Writer

    if args.preset == "custom" and not (args.instruction or "").strip():
        raise SystemExit("error: --preset custom needs --instruction")
    if args.preset == "translate" and not args.target_language:
        raise SystemExit("error: --preset translate needs --target-language")
    rows = _read_rows(args.input)
    params = RewriteParams(
        preset=args.preset,
        instruction=args.instruction,
        target_language=args.target_language,
        language=args.language,
        sampling=Sampling(temperature=args.temperature, max_tokens=2048),
    )
    items = [
        RewriteItem(str(n), str(r.get("instruction", "")), str(r.get("input", "")), str(r.get("output", "")))
        for n, r in enumerate(rows)
        if str(r.get("output", "")).strip()
    ]
    goal = goal_text(params)
    by_reason: Counter[str] = Counter()

    async def body(gateway: Gateway, progress: Progress, writer: _Writer) -> RewriteSummary:
        def emit(results: list[RewriteResult]) -> None:
            if writer.discards:
                return
            out = []
            for r in results:
                row = rows[int(r.key)]
                kept = r.status == "rewritten"
                if kept:
                    rewrite = {"preset": args.preset, "goal": goal, "model": gateway.teacher.model}
                    out.append(
                        (
                            True,
                            {**row, "output": r.text, "original_output": row["output"], "rewrite": rewrite},
                        )
                    )
                else:
                    by_reason[r.status] += 1
                    out.append((False, {**row, "reason": r.status}))
                progress.record(None if kept else r.status)
            writer.write(out)

        return await run_rewrite(gateway=gateway, items=items, params=params, emit=emit)

    def describe(result: RewriteSummary) -> Summary:
        table: list[Row] = [("rewritten", result.counts.get("rewritten", 0)), *reason_rows(by_reason)]
        return table, {"counts": result.counts, "rejected_by_reason": dict(by_reason)}

    return _run(
        args,
        command="generate rewrite",
        total=len(items),
        unit="records",
        kept_label="rewritten",
        body=body,
        describe=describe,
    )


def cmd_reasoning(args: argparse.Namespace) -> int:
    from app.cli.generate import Summary, _read_rows, _run, _Writer

    rows = _read_rows(args.input)
    items: list[ReasoningItem] = []
    for n, r in enumerate(rows):
        reference = reference_answer(str(r.get("output", "")), args.reference_from)
        if reference is not None and str(r.get("instruction", "")).strip():
            items.append(ReasoningItem(str(n), str(r["instruction"]), str(r.get("input", "")), reference))
    params = ReasoningParams(language=args.language)
    by_reason: Counter[str] = Counter()
    counts: Counter[str] = Counter()

    async def body(gateway: Gateway, progress: Progress, writer: _Writer) -> ReasoningSummary:
        def emit(results: list[ReasoningResult]) -> None:
            if writer.discards:
                return
            out = []
            for r in results:
                row = rows[int(r.key)]
                counts[r.status] += 1
                kept = r.status == "matched"
                reason = None if kept else REASONS.get(r.status, r.status)
                check: dict[str, Any] | None = r.check.to_dict() if r.check else None
                solved = {
                    **row,
                    "output": r.solution,
                    "reference_output": row.get("output"),
                    "answer_check": check,
                }
                out.append((kept, solved if kept else {**solved, "reason": reason}))
                if reason:
                    by_reason[reason] += 1
                progress.record(reason)
            writer.write(out)

        return await run_reasoning(gateway=gateway, items=items, params=params, emit=emit)

    def describe(result: ReasoningSummary) -> Summary:
        checked = counts["matched"] + counts["mismatched"] + counts["unparseable"]
        rate = round(counts["matched"] / checked, 4) if checked else None
        table: list[Row] = [
            ("matched", counts["matched"]),
            ("match rate", "-" if rate is None else f"{rate:.1%}"),
            ("without a reference", len(rows) - len(items)),
            *reason_rows(by_reason),
        ]
        data = {"counts": dict(counts), "match_rate": rate, "no_reference": len(rows) - len(items)}
        return table, {**data, "rejected_by_reason": dict(by_reason)}

    return _run(
        args,
        command="generate reasoning",
        total=len(items),
        unit="questions",
        kept_label="matched",
        body=body,
        describe=describe,
    )
