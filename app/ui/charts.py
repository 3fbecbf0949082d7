"""Bar charts as geometry for server-side SVG: no chart library, nothing to load, fast to draw."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Bar:
    label: str
    value: int
    x: float
    y: float
    w: float
    h: float


@dataclass
class Chart:
    title: str
    width: int
    height: int
    horizontal: bool
    bars: list[Bar] = field(default_factory=list)
    total: int = 0

    @property
    def empty(self) -> bool:
        return self.total == 0


LABEL_W = 130  # room for category names left of horizontal bars
ROW_H = 20
PLOT_W = 260
COL_W = 34
PLOT_H = 120
LABEL_CHAR_W = 6  # a column label's characters at the axis font size (10px), roughly


def bar_chart(title: str, data: Mapping[str, int], *, horizontal: bool = True) -> Chart:
    """Horizontal bars for categories (status, source, label, words); columns for histograms (keeps the
    buckets' order)."""
    values = [(str(k), int(v)) for k, v in data.items()]
    peak = max((v for _, v in values), default=0) or 1
    total = sum(v for _, v in values)
    if horizontal:
        chart = Chart(title, LABEL_W + PLOT_W + 60, max(1, len(values)) * ROW_H + 4, True, total=total)
        for i, (label, value) in enumerate(values):
            chart.bars.append(Bar(label, value, LABEL_W, i * ROW_H + 2, PLOT_W * value / peak, ROW_H - 6))
        return chart
    # A column is as wide as its label ("none ≥ 0.70" needs more room than "0.3").
    widths = [max(COL_W, LABEL_CHAR_W * len(label) + 6) for label, _ in values]
    chart = Chart(title, max(COL_W, sum(widths)) + 10, PLOT_H + 40, False, total=total)
    x = 5
    for (label, value), width in zip(values, widths, strict=True):
        h = PLOT_H * value / peak
        chart.bars.append(Bar(label, value, x, 14 + PLOT_H - h, width - 6, h))
        x += width
    return chart


@dataclass(frozen=True)
class RateBar:
    """A win rate from 0 to 1 with its 95% interval (a whisker) and, when fitted, the length-controlled
    figure (a tick)."""

    label: str
    rate: float | None
    low: float | None
    high: float | None
    lc: float | None
    n: int
    y: float
    w: float
    low_x: float | None
    high_x: float | None
    lc_x: float | None


@dataclass
class RateChart:
    title: str
    width: int
    height: int
    x0: int
    plot_w: int
    bars: list[RateBar] = field(default_factory=list)

    @property
    def mid_x(self) -> float:
        return self.x0 + self.plot_w / 2

    @property
    def empty(self) -> bool:
        return not any(b.rate is not None for b in self.bars)


RATE_LABEL_W = 200  # "system a vs system b" names


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def rate_chart(title: str, rows: Sequence[tuple[str, Mapping[str, object]]]) -> RateChart:
    """Win rates on a fixed 0..1 axis (0.5, a draw, in the middle): one row per (label, WinRate as a dict),
    with keys win_rate, ci_low, ci_high, lc_win_rate and n as app.pipeline.pairwise.WinRate has them."""
    chart = RateChart(
        title, RATE_LABEL_W + PLOT_W + 130, max(1, len(rows)) * (ROW_H + 4) + 22, RATE_LABEL_W, PLOT_W
    )

    def x(v: float | None) -> float | None:
        return None if v is None else chart.x0 + PLOT_W * min(1.0, max(0.0, v))

    for i, (label, r) in enumerate(rows):
        rate = _num(r.get("win_rate"))
        low, high, lc = _num(r.get("ci_low")), _num(r.get("ci_high")), _num(r.get("lc_win_rate"))
        n = r.get("n")
        chart.bars.append(
            RateBar(
                label=label,
                rate=rate,
                low=low,
                high=high,
                lc=lc,
                n=n if isinstance(n, int) else 0,
                y=i * (ROW_H + 4) + 4,
                w=PLOT_W * min(1.0, max(0.0, rate or 0.0)),
                low_x=x(low),
                high_x=x(high),
                lc_x=x(lc),
            )
        )
    return chart
