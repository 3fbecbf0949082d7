"""`instructforge dedup` and `instructforge filter`: curation of a JSONL/JSON file without the service.

The output holds the kept records unchanged; the report has one JSON line per input record with its
decision and reason, so nothing is dropped silently.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from app.cli.output import Progress, Row, add_output_options, reason_rows, summary, wants_progress
from app.pipeline.rouge import NearDuplicateIndex
from app.pipeline.rules import RULES, RuleConfig, evaluate, funnel
from app.pipeline.textnorm import normalize

__all__ = ["add_cli", "load_records", "run_dedup", "run_filter"]


class InputError(ValueError):
    """An input file that is not JSON Lines or a JSON array of objects."""


def load_records(path: Path) -> list[dict[str, Any]]:
    """Objects of a JSON array or of a JSON Lines file (blank lines allowed)."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}: line {err.lineno}: not valid JSON ({err.msg})") from err
        rows: list[Any] = data
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise InputError(f"{path}: line {number}: not valid JSON ({err.msg})") from err
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise InputError(f"{path}: record {number}: expected a JSON object")
    return rows


def _write(path: Path, records: Iterable[dict[str, Any]], *, as_array: bool) -> None:
    with path.open("w", encoding="utf-8") as fp:
        if as_array:
            json.dump(list(records), fp, ensure_ascii=False, indent=2)
            fp.write("\n")
        else:
            for record in records:
                fp.write(json.dumps(record, ensure_ascii=False) + "\n")


def _field_text(record: dict[str, Any], fields: list[str]) -> str:
    return "\n".join(str(record.get(f) or "") for f in fields).strip()


OnRecord = Callable[[str | None], None]
"""Called once per record, in order, with its rejection reason (None: kept)."""


def run_dedup(
    records: list[dict[str, Any]],
    *,
    fields: list[str],
    threshold: float,
    stem: bool,
    on_record: OnRecord = lambda reason: None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Kept records and one report row per record: exact duplicates first, then ROUGE-L."""
    index = NearDuplicateIndex(threshold=threshold, stem=stem)
    first: dict[str, int] = {}
    kept: list[dict[str, Any]] = []
    report: list[dict[str, Any]] = []
    for i, record in enumerate(records):
        text = _field_text(record, fields)
        norm = normalize(text)
        if norm in first:
            report.append(
                {
                    "index": i,
                    "decision": "rejected",
                    "reason": "exact_duplicate",
                    "nearest": first[norm],
                    "score": 1.0,
                }
            )
            on_record("exact_duplicate")
            continue
        first[norm] = i
        decision = index.check_and_add(str(i), text)
        nearest = int(decision.nearest) if decision.nearest is not None else None
        report.append(
            {
                "index": i,
                "decision": "kept" if decision.kept else "rejected",
                "reason": None if decision.kept else "near_duplicate",
                "nearest": nearest,
                "score": round(decision.score, 6),
            }
        )
        if decision.kept:
            kept.append(record)
        on_record(None if decision.kept else "near_duplicate")
    return kept, report


def run_filter(
    records: list[dict[str, Any]],
    *,
    rules: list[str] | None,
    language: str,
    on_record: OnRecord = lambda reason: None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, int]]:
    """Kept records, one report row per record (every rule hit) and the funnel."""
    config = RuleConfig(enabled=rules)
    kept: list[dict[str, Any]] = []
    report: list[dict[str, Any]] = []
    all_hits = []
    for i, record in enumerate(records):
        output = record.get("output", record.get("response"))
        hits = evaluate(
            instruction=str(record.get("instruction") or ""),
            input=str(record.get("input") or ""),
            output=None if output is None else str(output),
            language=language,
            config=config,
        )
        all_hits.append(hits)
        report.append(
            {
                "index": i,
                "decision": "rejected" if hits else "kept",
                "reason": hits[0].code if hits else None,
                "hits": [{"code": h.code, "detail": h.detail} for h in hits],
            }
        )
        if not hits:
            kept.append(record)
        on_record(hits[0].code if hits else None)
    return kept, report, funnel(all_hits)


def _dedup_command(args: argparse.Namespace) -> int:
    try:
        records = load_records(args.input)
    except (InputError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    fields = [f.strip() for f in args.field.split(",") if f.strip()]
    progress = Progress(label="dedup", unit="records", total=len(records), enabled=wants_progress(args))
    try:
        kept, report = run_dedup(
            records, fields=fields, threshold=args.threshold, stem=args.stem, on_record=progress.record
        )
    finally:
        progress.close()
    _write(args.output, kept, as_array=args.output.suffix == ".json")
    if args.report:
        _write(args.report, report, as_array=False)
    reasons = dict(Counter(row["reason"] for row in report if row["reason"]))
    rows: list[Row] = [
        ("records", len(records)),
        ("kept", len(kept)),
        ("rejected", len(records) - len(kept)),
        *reason_rows(reasons),
        *_files(args),
    ]
    summary(
        title=f"dedup: {len(kept)} of {len(records)} records kept (ROUGE-L threshold {args.threshold})",
        rows=rows,
        data={"input": len(records), "kept": len(kept), "rejected": reasons},
        as_json=args.json,
    )
    return 0


def _filter_command(args: argparse.Namespace) -> int:
    rules = [r.strip() for r in args.rules.split(",") if r.strip()] if args.rules else None
    unknown = sorted(set(rules or ()) - set(RULES))
    if unknown:
        print(
            f"error: unknown rules: {', '.join(unknown)} (known: {', '.join(sorted(RULES))})", file=sys.stderr
        )
        return 2
    try:
        records = load_records(args.input)
    except (InputError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    progress = Progress(label="filter", unit="records", total=len(records), enabled=wants_progress(args))
    try:
        kept, report, removed = run_filter(
            records, rules=rules, language=args.language, on_record=progress.record
        )
    finally:
        progress.close()
    _write(args.output, kept, as_array=args.output.suffix == ".json")
    if args.report:
        _write(args.report, report, as_array=False)
    rows: list[Row] = [
        ("records", len(records)),
        ("kept", len(kept)),
        ("rejected (first rule broken)", len(records) - len(kept)),
        *reason_rows(removed),
        *_files(args),
    ]
    summary(
        title=f"filter: {len(kept)} of {len(records)} records kept",
        rows=rows,
        data={"input": len(records), "kept": len(kept), "funnel": removed},
        as_json=args.json,
    )
    return 0


def _files(args: argparse.Namespace) -> list[Row]:
    written: list[Row] = [("output", args.output.absolute())]
    return written + ([("report", args.report.absolute())] if args.report else [])


def add_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `dedup` and `filter`."""
    dedup = subparsers.add_parser(
        "dedup",
        help="drop exact and ROUGE-L near-duplicates (Self-Instruct's filter) from a JSONL/JSON file",
        description="Drop exact duplicates (same normalised text) and near-duplicates (ROUGE-L F above "
        "--threshold against an earlier kept record, Self-Instruct's filter); the first of each group "
        "is kept.",
    )
    dedup.add_argument("input", type=Path, help="JSON Lines or JSON array of alpaca-style objects")
    dedup.add_argument(
        "-o", "--output", type=Path, required=True, help="kept records (.json: array, else JSONL)"
    )
    dedup.add_argument(
        "--report", type=Path, help="one JSON line per input record: decision, reason, nearest"
    )
    dedup.add_argument(
        "--threshold", type=float, default=0.7, help="keep iff max ROUGE-L <= this (default: %(default)s)"
    )
    dedup.add_argument("--stem", action="store_true", help="Porter-stem English tokens, as rouge_score can")
    dedup.add_argument(
        "--field", default="instruction", help="field(s) compared, comma-separated (default: %(default)s)"
    )
    add_output_options(dedup)
    dedup.set_defaults(func=_dedup_command)

    rules = subparsers.add_parser(
        "filter",
        help="apply the quality rules to a JSONL/JSON file",
        description="Apply the quality rules (docs/curation.md) to every record; a record breaking any "
        "rule is rejected, and the report names every rule it broke.",
    )
    rules.add_argument("input", type=Path, help="JSON Lines or JSON array of alpaca-style objects")
    rules.add_argument(
        "-o", "--output", type=Path, required=True, help="kept records (.json: array, else JSONL)"
    )
    rules.add_argument(
        "--report", type=Path, help="one JSON line per input record: decision and every rule hit"
    )
    rules.add_argument(
        "--rules", help=f"comma-separated rule codes (default: all): {', '.join(sorted(RULES))}"
    )
    rules.add_argument(
        "--language", default="en", help="the dataset's language, e.g. en or zh (default: %(default)s)"
    )
    add_output_options(rules)
    rules.set_defaults(func=_filter_command)
