"""Per-arm charts of a rollout: the PromQL behind them and their geometry as inline SVG (pure).

The queries are the analysis's own built-in templates (`controlplane.metrics.templates`),
rendered once per arm with that arm's cluster in the canary's place, so a chart shows
the numbers the analysis judges, for the stable arm beside the canary. The geometry is
plain numbers for a template's `<svg>`: no chart library, no script.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from controlplane.metrics.templates import BUILTIN_TEMPLATES, prometheus_duration, render
from controlplane.xds.resources import cluster_name

# (built-in template, title, unit)
CHARTS: tuple[tuple[str, str, str], ...] = (
    ("request-rate", "requests per second", "req/s"),
    ("request-error-rate", "error rate (5xx share)", "%"),
    ("request-duration-p99", "p99 latency", "ms"),
)
# Points per series: enough for a smooth line, few enough that a page stays small.
MAX_POINTS = 120
# Prometheus needs two samples in a rate window; the default scrape interval is 15 s.
DEFAULT_WINDOW_SECONDS = 30.0
WIDTH, HEIGHT, PADDING = 360, 120, 4

# Shown where a value is absent.
NONE = "\u2013"


@dataclass(frozen=True)
class Arm:
    label: str  # "stable 1" / "canary 2"
    kind: str  # "stable" or "canary": the CSS class of its line
    version: str


@dataclass(frozen=True)
class RangeQuery:
    chart: str
    arm: Arm
    promql: str


@dataclass(frozen=True)
class TimeRange:
    start: float
    end: float
    step: float


def chart_queries(model: str, arms: Sequence[Arm], *, window_seconds: float) -> list[RangeQuery]:
    """One range query per (chart, arm)."""
    queries = []
    for template, _title, _unit in CHARTS:
        for arm in arms:
            values = {"canary_cluster": cluster_name(model, arm.version),
                      "window": prometheus_duration(window_seconds)}
            queries.append(RangeQuery(template, arm, render(BUILTIN_TEMPLATES[template], values)))
    return queries


def time_range(started: float, ended: float | None, now: float) -> TimeRange:
    """From the rollout's start (a little before, for the stable arm's baseline) to its end or now."""
    start = started - 10.0
    end = max(start + 1.0, ended + 5.0 if ended is not None else now)
    step = max(1.0, math.ceil((end - start) / MAX_POINTS))
    return TimeRange(start, end, step)


@dataclass(frozen=True)
class Line:
    kind: str
    label: str
    points: str  # the `points` attribute of an SVG polyline
    last: str  # the newest value, formatted


@dataclass(frozen=True)
class Chart:
    title: str
    unit: str
    width: int
    height: int
    lines: tuple[Line, ...]
    y_max: str
    start_label: str
    end_label: str
    note: str  # why there is no line ("no data yet", Prometheus's error)


def chart(
    template: str,
    samples: Sequence[tuple[Arm, Sequence[tuple[float, float]]]],
    window: TimeRange,
    *,
    error: str = "",
) -> Chart:
    """The chart of one template: a polyline per arm, scaled to the largest value shown."""
    title, unit = next((t, u) for name, t, u in CHARTS if name == template)
    scale = 100.0 if unit == "%" else 1.0
    finite = [value * scale for _arm, points in samples for _t, value in points if math.isfinite(value)]
    top = _nice_ceiling(max(finite, default=0.0))
    lines = tuple(
        Line(arm.kind, arm.label, _polyline(points, window, top, scale), _format(points[-1][1] * scale, unit))
        for arm, points in samples
        if points
    )
    note = error or ("" if lines else "no data yet: Prometheus has no samples for either arm")
    return Chart(
        title, unit, WIDTH, HEIGHT, lines, _format(top, unit),
        _clock(window.start), _clock(window.end), note,
    )


def _polyline(points: Sequence[tuple[float, float]], window: TimeRange, top: float, scale: float) -> str:
    span = window.end - window.start
    inner_w, inner_h = WIDTH - 2 * PADDING, HEIGHT - 2 * PADDING
    coords = []
    for at, value in points:
        if not math.isfinite(value):
            continue  # NaN: no traffic in the window; the line skips the gap
        x = PADDING + inner_w * (at - window.start) / span
        y = PADDING + inner_h * (1 - (value * scale) / top)
        coords.append(f"{x:.1f},{y:.1f}")
    return " ".join(coords)


def _nice_ceiling(value: float) -> float:
    """1, 2 or 5 times a power of ten, at or above `value`: a y axis a reader can take in."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    return float(next(m * power for m in (1, 2, 5, 10) if m * power >= value))


def _format(value: float, unit: str) -> str:
    if not math.isfinite(value):
        return NONE
    digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    return f"{value:.{digits}f} {unit}"


def _clock(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M:%S")
