"""`instructforge generate respond`: n candidate answers per prompt from a teacher, files to files, without
the service (docs/preferences.md)."""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable

from app.cli.output import Progress, Row, reason_rows
from app.pipeline.llm import Gateway, Sampling
from app.pipeline.respond import RespondParams, RespondResult, RespondSummary, item_from_row, run_respond


def add_respond(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    common: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Register `generate respond`."""
    rp = sub.add_parser(
        "respond",
        help="answer prompts with n candidate responses each (for preference data)",
        description="The teacher answers each prompt n times (each sample its own request, so a cache "
        "replays them); every answer is one output line: the row with the answer as `output` and "
        "`candidate` saying how it was sampled. Empty answers go to --rejected.",
    )
    rp.add_argument(
        "--input",
        required=True,
        help="JSON/JSONL prompts: Alpaca (instruction, input), MT-Bench (turns) or OpenAI (messages) rows; "
        "answers already there are ignored",
    )
    rp.add_argument("--n", type=int, default=2, help="candidates per prompt (default: %(default)s)")
    rp.add_argument(
        "--temperature", type=float, default=0.8, help="sampling temperature (default: %(default)s)"
    )
    rp.add_argument("--max-tokens", type=int, default=1024, help="longest answer (default: %(default)s)")
    rp.add_argument("--system-prompt", default=None, help="sent before prompts without a system prompt")
    common(rp)
    from app.cli.batch import add_batch_option

    add_batch_option(rp)
    rp.set_defaults(func=cmd_respond)


def cmd_respond(args: argparse.Namespace) -> int:
    from app.cli.generate import Summary, _read_rows, _run, _Writer

    if not 1 <= args.n <= 16:
        raise SystemExit("error: --n must be between 1 and 16")
    rows = _read_rows(args.input)
    params = RespondParams(
        sampling=Sampling(temperature=args.temperature, max_tokens=args.max_tokens),
        system_prompt=args.system_prompt,
    )
    items = [
        item
        for j in range(args.n)
        for n, r in enumerate(rows)
        if (item := item_from_row(str(n), r, j)) is not None
    ]
    no_prompt = len(rows) - len(items) // args.n
    by_reason: Counter[str] = Counter()

    async def body(gateway: Gateway, progress: Progress, writer: _Writer) -> RespondSummary:
        def emit(results: list[RespondResult]) -> None:
            if writer.discards:
                return
            out = []
            for r in results:
                row = rows[int(r.key)]
                kept = r.status in ("answered", "truncated")
                candidate = {
                    "model": gateway.teacher.model,
                    "temperature": args.temperature,
                    "sample_index": r.sample_index,
                    "finish_reason": r.finish_reason,
                }
                if kept:
                    out.append((True, {**row, "output": r.text, "candidate": candidate}))
                else:
                    by_reason[r.status] += 1
                    out.append((False, {**row, "reason": r.status, "candidate": candidate}))
                progress.record(None if kept else r.status)
            writer.write(out)

        return await run_respond(gateway=gateway, items=items, params=params, emit=emit)

    def describe(result: RespondSummary) -> Summary:
        answered = result.counts.get("answered", 0) + result.counts.get("truncated", 0)
        table: list[Row] = [
            ("candidates", answered),
            ("cut off by --max-tokens", result.counts.get("truncated", 0)),
            ("rows without a prompt", no_prompt),
            *reason_rows(by_reason),
        ]
        return table, {"counts": result.counts, "no_prompt": no_prompt, "rejected_by_reason": dict(by_reason)}

    return _run(
        args,
        command="generate respond",
        total=len(items),
        unit="answers",
        kept_label="answered",
        body=body,
        describe=describe,
    )
