"""What a long command shows while it runs and when it ends.

On a terminal: a live bar on stderr with the command's counters beside it (kept, rejected by reason, and
what the command adds, such as teacher calls and cost), then a small summary table on stdout. Anywhere
else (a pipe, a file, cron, CI): no bar and no carriage returns, and the summary is one JSON line on
stdout, the same object `--json` prints on a terminal. Errors are "error: ..." lines on stderr either way.

The bar is tqdm's: a declared dependency already (nltk needs it too), small and well kept, and a bar with a
line of counters is all we ask of it. rich would draw a finer table, but it is not one of our dependencies
(only the training extra brings it, through transformers and typer), and a two-column table is a few lines.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn, TextIO

from tqdm import tqdm

REDRAW_S = 0.1
"""Counters may change thousands of times a second (a dedup over a big file); ten redraws a second look
live and cost nothing."""
TICK_S = 0.5
"""The bar is redrawn at least this often, so its clock moves while every teacher call is still out (the
first round of a generation can be most of a run: one redraw per event left the bar at 0 % for 19 s)."""
FALLBACK_COLUMNS = 100
"""A pseudo-terminal that was never given a size reports 0 columns, and tqdm then draws nothing at all."""
MIN_BAR = 10
"""The bar keeps at least this many characters; the counters after it are cut to fit the terminal."""
TOP_REASONS = 3
"""Reasons shown beside the bar; the summary lists them all."""

Row = tuple[str, object]


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream is no terminal
        return False


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """`--json` and `--no-progress`, the same on every long command."""
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the summary as one JSON object even on a terminal (when stdout is not a terminal it "
        "always is)",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="draw no progress bar (none is drawn anyway when stderr is not a terminal)",
    )


def wants_progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "no_progress", False) and is_terminal(sys.stderr)


class Progress:
    """A live bar on stderr with kept / rejected-by-reason counters, or nothing when `enabled` is false.

    Safe to feed from several threads (the import's writer thread, the ticker): every change and every
    redraw holds one lock. `extra` adds the command's own counters; it is called under that lock.
    """

    def __init__(
        self,
        *,
        label: str,
        unit: str,
        total: int | None,
        enabled: bool,
        kept_label: str = "kept",
        extra: Callable[[], str] | None = None,
    ) -> None:
        self.done = 0
        self.kept_label = kept_label
        self.kept: int | None = None
        self.rejected: Counter[str] = Counter()
        self._extra = extra
        self._lock = threading.Lock()
        self._drawn = 0.0
        self._fixed = 0
        self._bar: tqdm[NoReturn] | None = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        if not enabled:
            return
        columns = _columns(sys.stderr)
        self._fixed = _fixed_width(label, unit, total)
        self._bar = tqdm(
            total=total,
            desc=label,
            file=sys.stderr,
            leave=False,  # the summary table replaces it
            ncols=columns or FALLBACK_COLUMNS,
            dynamic_ncols=bool(columns),
            mininterval=REDRAW_S,
            bar_format=_bar_format(unit, total),
        )
        self._ticker = threading.Thread(target=self._tick, name="progress-ticker", daemon=True)
        self._ticker.start()

    def record(self, reason: str | None) -> None:
        """One item decided: kept when `reason` is None, else rejected for `reason`."""
        with self._lock:
            self.done += 1
            if reason is None:
                self.kept = (self.kept or 0) + 1
            else:
                self.rejected[reason] += 1
        self.touch()

    def advance(self, n: int) -> None:
        with self._lock:
            self.done += n
        self.touch()

    def set(self, *, done: int, kept: int | None = None, rejected: Mapping[str, int] | None = None) -> None:
        """Cumulative counts, as a generation round reports them."""
        with self._lock:
            self.done = done
            self.kept = kept
            if rejected is not None:
                self.rejected = Counter(rejected)
        self.touch()

    def phase(self, *, label: str, unit: str, total: int | None) -> None:
        """Start over under another label (the import: validating, then writing); `total` None keeps the old."""
        with self._lock:
            self.done = 0
            if self._bar is not None:
                self._bar.bar_format = _bar_format(unit, total)
                self._fixed = _fixed_width(label, unit, total)
                self._bar.set_description_str(label, refresh=False)
                self._bar.reset(total=total)
        self.touch(force=True)

    def touch(self, *, force: bool = False) -> None:
        """Something shown beside the bar changed: redraw, at most every REDRAW_S."""
        if self._bar is not None and (force or time.monotonic() - self._drawn >= REDRAW_S):
            self._draw()

    def close(self) -> None:
        if self._bar is None:
            return
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        self._draw()
        with self._lock:
            self._bar.close()
            self._bar = None

    def status(self) -> str:
        """The counters beside the bar: 'calls 40 | $0.0123 | kept 12 | rejected 5 (near_duplicate 4, ...)'.

        The command's own counters (calls, cost) come first: a narrow terminal cuts the reasons first."""
        parts = []
        if self._extra is not None and (extra := self._extra()):
            parts.append(extra)
        if self.kept is not None:
            parts.append(f"{self.kept_label} {self.kept}")
        if self.rejected:
            top = self.rejected.most_common(TOP_REASONS)
            more = ", ..." if len(self.rejected) > TOP_REASONS else ""
            shown = ", ".join(f"{reason} {n}" for reason, n in top)
            parts.append(f"rejected {self.rejected.total()} ({shown}{more})")
        return " | ".join(parts)

    def _draw(self) -> None:
        with self._lock:
            bar = self._bar
            if bar is None:
                return
            columns = _columns(sys.stderr) or FALLBACK_COLUMNS
            bar.set_postfix_str(_fit(self.status(), columns - self._fixed), refresh=False)
            if self.done != bar.n:
                bar.update(self.done - bar.n)  # through update(), so that tqdm's rate and time left follow
            bar.refresh()
            self._drawn = time.monotonic()

    def _tick(self) -> None:
        while not self._stop.wait(TICK_S):
            self._draw()


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


def _bar_format(unit: str, total: int | None) -> str:
    # tqdm puts ", " before a non-empty postfix
    if total is None:
        return f"{{desc}}: {{n_fmt}} {unit} [{{elapsed}}]{{postfix}}"
    return f"{{desc}} {{percentage:3.0f}}%|{{bar}}| {{n_fmt}}/{{total_fmt}} {unit} [{{elapsed}}<{{remaining}}]{{postfix}}"


def _fixed_width(label: str, unit: str, total: int | None) -> int:
    """Characters of the line that are not counters, with room for a bar of MIN_BAR."""
    digits = len(str(total or 0))
    # ' 100%|' + bar + '| ' + 'n/total unit' + ' [00:00<00:00]' + ', '
    return len(label) + 6 + MIN_BAR + 2 + 2 * digits + 1 + len(unit) + 14 + 2 + 4  # + tqdm's margins


def _fit(status: str, room: int) -> str:
    """The counters cut to `room` characters, so that the bar itself never shrinks away."""
    return status if len(status) <= room else status[: max(0, room - 3)] + "..."


def reason_rows(by_reason: Mapping[str, int]) -> list[Row]:
    """One indented row per reason, most frequent first."""
    ordered = sorted(by_reason.items(), key=lambda item: (-item[1], item[0]))
    return [(f"  {reason}", n) for reason, n in ordered]


def table(title: str, rows: Sequence[Row]) -> str:
    """A title, a rule and two aligned columns."""
    width = max((len(label) for label, _ in rows), default=0)
    lines = [f"  {label:<{width}}  {value}" for label, value in rows]
    rule = "-" * max([len(title), *(len(line) for line in lines)])
    return "\n".join([title, rule, *lines]) + "\n"


def summary(*, title: str, rows: Sequence[Row], data: Mapping[str, Any], as_json: bool) -> None:
    """The command's result: a table on a terminal; one JSON line with `--json` or when stdout is not one."""
    if as_json or not is_terminal(sys.stdout):
        sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(table(title, rows))
    sys.stdout.flush()
