"""Bar charts as geometry for server-side SVG: no chart library, nothing to load, fast to draw."""

from __future__ import annotations

from collections.abc import Mapping
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
