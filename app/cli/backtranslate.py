"""`instructforge generate backtranslate`: instruction backtranslation from documents, without the service."""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from app.cli.output import Progress, Row, reason_rows
from app.pipeline.backtranslate import (
    BacktranslateItem,
    BacktranslateParams,
    BacktranslateResult,
    BacktranslateSummary,
    run_backtranslate,
)
from app.pipeline.formats.documents import read_documents, split_passages
from app.pipeline.formats.model import FormatError
from app.pipeline.llm import Gateway


def add_backtranslate(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: Any, func: Any
) -> None:
    bt = sub.add_parser(
        "backtranslate",
        help="instruction backtranslation (Humpback) from plain documents",
        description="Instruction backtranslation (Li et al., 2023): split documents into passages, have the "
        "teacher write an instruction for each passage and score the pair 1-5; pairs scoring at least "
        "--threshold are kept (instruction, passage as output, score and rationale).",
    )
    bt.add_argument(
        "--input",
        required=True,
        help="documents: .txt/.md (one document), JSONL or JSON (one document per line or item)",
    )
    bt.add_argument(
        "--text-field", default="text", help="JSON field holding a document's text (default: %(default)s)"
    )
    bt.add_argument(
        "--max-chars", type=int, default=2000, help="longest passage in characters (default: %(default)s)"
    )
    bt.add_argument(
        "--min-chars",
        type=int,
        default=50,
        help="shorter passages (headings alone) are left out (default: %(default)s)",
    )
    bt.add_argument(
        "--threshold",
        type=float,
        default=4.0,
        help="keep pairs scoring at least this, 1-5 (default: %(default)s, as Humpback)",
    )
    common(bt)
    from app.cli.batch import add_batch_option

    add_batch_option(bt)
    bt.set_defaults(func=func)


def passages_of(args: argparse.Namespace) -> tuple[list[BacktranslateItem], dict[str, dict[str, Any]]]:
    try:
        docs = read_documents(Path(args.input).read_bytes(), filename=args.input, text_field=args.text_field)
    except FormatError as exc:
        raise SystemExit(f"error: {args.input}: {exc}") from exc
    items: list[BacktranslateItem] = []
    where: dict[str, dict[str, Any]] = {}
    for d, doc in enumerate(docs):
        for p in split_passages(doc.text, max_chars=args.max_chars, min_chars=args.min_chars):
            key = f"{d}:{p.index}"
            items.append(BacktranslateItem(key, p.text))
            where[key] = {
                "document": doc.name,
                "passage_index": p.index,
                "char_start": p.start,
                "char_end": p.end,
            }
    return items, where


def cmd_backtranslate(args: argparse.Namespace) -> int:
    from app.cli.generate import Summary, _run, _Writer

    items, where = passages_of(args)
    passages = {i.key: i.passage for i in items}
    params = BacktranslateParams(threshold=args.threshold, language=args.language)
    by_reason: Counter[str] = Counter()

    async def body(gateway: Gateway, progress: Progress, writer: _Writer) -> BacktranslateSummary:
        def emit(results: list[BacktranslateResult]) -> None:
            if writer.discards:
                return
            out = []
            for r in results:
                row = {
                    "instruction": r.instruction,
                    "input": "",
                    "output": passages[r.key],
                    "score": r.score,
                    "rationale": r.rationale,
                    "reason": r.reason,
                    **where[r.key],
                }
                kept = r.status == "kept"
                out.append((kept, row))
                if not kept:
                    by_reason[r.reason or "rejected"] += 1
                progress.record(None if kept else (r.reason or "rejected"))
            writer.write(out)

        return await run_backtranslate(gateway=gateway, items=items, params=params, emit=emit)

    def describe(result: BacktranslateSummary) -> Summary:
        mean = "-" if result.mean_score is None else f"{result.mean_score:.2f}"
        table: list[Row] = [
            ("passages", len(items)),
            ("kept", f"{result.kept} (score >= {args.threshold})"),
            ("not kept", result.rejected),
            *reason_rows(by_reason),
            ("mean score", mean),
        ]
        return table, {**asdict(result), "passages": len(items)}

    return _run(
        args,
        command="generate backtranslate",
        total=len(items),
        unit="passages",
        kept_label="kept",
        body=body,
        describe=describe,
    )
