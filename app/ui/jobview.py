"""A job in human words for its pages: when it started, how long it ran, and its counters, parameters and
result as rows of a table instead of a dict's repr.

app/ui/static/jobs.js repaints the same rows on each live update, so its `rows`, `shown`, `when` and
`duration` follow these functions rule for rule; tests/ui/test_job_page.py compares a live-updated page with
the same page rendered here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Row:
    label: str
    value: str
    depth: int  # 0: a top-level key; 1: a key of a nested mapping (a reason code under its counter)


def shown(value: Any) -> str:
    """A value as a person reads it: floats rounded to 4 places, lists of plain values joined."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        rounded = round(value, 4)
        return str(int(rounded)) if rounded.is_integer() else str(rounded)
    if isinstance(value, list):
        if not value:
            return "none"
        if all(not isinstance(v, dict | list) for v in value):
            return ", ".join(shown(v) for v in value)
        # Lists of objects (dropped examples, templates) are for the raw JSON below the table.
        return f"{len(value)} item{'' if len(value) == 1 else 's'}"
    if isinstance(value, dict):
        return "none" if not value else f"{len(value)} entr{'y' if len(value) == 1 else 'ies'}"
    return str(value)


def rows(data: dict[str, Any] | None) -> list[Row]:
    """Top-level keys in words ("rejected_by_reason" → "rejected by reason"); a nested mapping's keys,
    often reason or rule codes that the docs name, stay as they are, one row each under their key. Its
    unset (null) entries are left out: a record filter sets two of its fifteen."""
    out: list[Row] = []
    for key, value in (data or {}).items():
        label = key.replace("_", " ")
        nested = {k: v for k, v in value.items() if v is not None} if isinstance(value, dict) else {}
        if nested:
            out.append(Row(label, "", 0))
            out.extend(Row(str(k), shown(v), 1) for k, v in nested.items())
        elif isinstance(value, dict):
            out.append(Row(label, "none", 0))
        else:
            out.append(Row(label, shown(value), 0))
    return out


def line(table: list[Row]) -> str:
    """The rows on one line, for a list's cell: `kept tasks: 5 · rejected by reason: rouge_dup 3, length 2`."""
    parts: list[str] = []
    for r in table:
        if r.depth == 0 or not parts:
            parts.append(f"{r.label}: {r.value}" if r.value else f"{r.label}:")
        else:
            parts[-1] += f"{' ' if parts[-1].endswith(':') else ', '}{r.label} {r.value}"
    return " · ".join(parts)


def when(moment: datetime | None) -> str:
    """A moment to the second, in UTC and saying so (servers and curators rarely share a time zone)."""
    return "–" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float | None) -> str:
    """Seconds as `4.2 s`, `3 min 05 s` or `2 h 07 min`."""
    if seconds is None:
        return "–"
    if seconds < 59.95:  # from here on, one decimal would round to "60.0 s"
        return f"{max(seconds, 0.0):.1f} s"
    whole = int(seconds + 0.5)  # to the nearest second, halves up (as jobs.js's Math.floor(s + 0.5))
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def run_time(started: datetime | None, finished: datetime | None, now: datetime) -> float | None:
    """How long a job ran (or, still running, has run so far); None before it started."""
    if started is None:
        return None
    return ((finished or now) - started).total_seconds()
