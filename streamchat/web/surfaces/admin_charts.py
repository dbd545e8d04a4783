"""The owner's page's charts as SVG geometry: numbers in, rectangles and lines out; the template draws them.

No script and no inline style (the page's CSP allows neither): each shape carries a
class (``series-0``...) that ``static/admin.css`` colours. Every chart has its
numbers in a table beside it too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

WIDTH, HEIGHT = 640, 200
LEFT, BOTTOM, TOP = 44, 22, 8  # room for the axis labels


@dataclass
class Bar:
    x: float
    y: float
    width: float
    height: float
    series: int
    title: str  # a tooltip: the day, the series and its number


@dataclass
class Chart:
    """One chart: bars (stacked per day) or lines, with its scale's top value and the days' labels."""

    bars: list[Bar] = field(default_factory=list)
    lines: list[tuple[int, str]] = field(default_factory=list)  # (series, "x,y x,y ...")
    dots: list[tuple[int, float, float, str]] = field(default_factory=list)  # (series, x, y, title)
    limit_y: float | None = None  # a horizontal line, e.g. a budget
    top: float = 0
    labels: list[tuple[float, str]] = field(default_factory=list)  # (x, label) under the axis
    width: int = WIDTH
    height: int = HEIGHT
    plot_bottom: int = HEIGHT - BOTTOM
    left: int = LEFT


def _scale(top: float) -> float:
    """A round top for an axis above ``top``: 1, 2 or 5 times a power of ten."""
    if top <= 0:
        return 1
    step = 1.0
    while step * 10 <= top:
        step *= 10
    for factor in (1, 2, 5, 10):
        if step * factor >= top:
            return step * factor
    return step * 10


def _x_of(index: int, count: int) -> tuple[float, float]:
    slot = (WIDTH - LEFT) / max(count, 1)
    return LEFT + index * slot, slot


def _labels(days: list[str]) -> list[tuple[float, str]]:
    every = max(1, len(days) // 8)  # at most about 8 labels on the axis
    labels = []
    for index, day in enumerate(days):
        if index % every == 0:
            x, slot = _x_of(index, len(days))
            labels.append((x + slot / 2, day))
    return labels


def stacked_bars(days: list[str], series: list[str], values: list[list[int]], limit: float | None = None) -> Chart:
    """Bars per day, each split by series (``values[day][series]``)."""
    top = _scale(max([sum(v) for v in values] + [limit or 0, 1]))
    chart = Chart(top=top, labels=_labels(days))
    plot = HEIGHT - BOTTOM - TOP
    for index, (day, row) in enumerate(zip(days, values)):
        x, slot = _x_of(index, len(days))
        y = HEIGHT - BOTTOM
        for number, value in enumerate(row):
            if not value:
                continue
            height = value / top * plot
            y -= height
            chart.bars.append(Bar(x + slot * 0.15, y, slot * 0.7, height, number, f"{day}: {series[number]} {value}"))
    if limit:
        chart.limit_y = HEIGHT - BOTTOM - limit / top * plot
    return chart


def lines(days: list[str], series: list[str], values: list[list[float | None]]) -> Chart:
    """One line per series across the days (``values[series][day]``); a day with no value breaks it."""
    top = _scale(max([v for row in values for v in row if v is not None] + [1]))
    chart = Chart(top=top, labels=_labels(days))
    plot = HEIGHT - BOTTOM - TOP
    for number, row in enumerate(values):
        points = []
        for index, value in enumerate(row):
            if value is None:
                continue
            x, slot = _x_of(index, len(days))
            x, y = x + slot / 2, HEIGHT - BOTTOM - value / top * plot
            points.append(f"{x:.1f},{y:.1f}")
            chart.dots.append((number, x, y, f"{days[index]}: {series[number]} {value:g}"))
        if points:
            chart.lines.append((number, " ".join(points)))
    return chart
