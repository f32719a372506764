"""The dashboard's charts (docs/operations.md#dashboard-charts): depth, drain rate and oldest age over the last
hour, overall and per shard, drawn server-side as inline SVG from the samples the fan-out keeps
(``Buffer.chart_samples``). Pure functions: samples in, markup out, so every drawing is a unit test away.

No script and no ``style`` attribute: only SVG elements and presentation attributes, which a Content Security
Policy without ``unsafe-inline`` still renders. Every text drawn (titles, labels) is escaped here.

The drain rate between two samples of a shard is the difference of its drained total over the time between
them. A total that fell (a Redis restarted from an older snapshot, or a lagging replica promoted) counts from
0, as Prometheus' ``rate()`` does, so a reset never draws a negative rate or a spike.
"""

from __future__ import annotations

import html
import itertools
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from django.utils.safestring import SafeString, mark_safe

from buffer.values import ChartSample
from sweep.dashboard import duration

WINDOW_MS = 3_600_000  # the last hour
TICKS_MIN = (60, 45, 30, 15, 0)  # time ticks, minutes before now
GAP_INTERVALS = 2.5  # samples further apart than this many intervals are not joined: the chart shows the gap

Point = tuple[int, float]  # (t ms, value)


@dataclass(frozen=True, slots=True)
class Size:
    width: int
    height: int
    left: int = 52  # room for the y labels
    right: int = 8
    top: int = 18  # the title
    bottom: int = 16  # the time ticks

    @property
    def roomy(self) -> bool:
        """Wide enough to write "−60 min" beside "−45" (a small chart writes "−60")."""
        return self.width >= 300


BIG = Size(310, 130)  # three side by side beside the admin sidebar at 1366 px
SMALL = Size(250, 92)


@dataclass(frozen=True, slots=True)
class Metric:
    """What a chart plots: a title, a colour and how its values read."""

    title: str
    colour: str
    text: Callable[[float], str]


DEPTH = Metric("depth", "#1f77b4", lambda v: f"{round(v):,}")
RATE = Metric("drained/s", "#2e7d32", lambda v: f"{v:,.1f}/s")
AGE = Metric("oldest age", "#c77700", lambda v: duration(v))


@dataclass(frozen=True, slots=True)
class Chart:
    metric: str
    svg: SafeString


@dataclass(frozen=True, slots=True)
class ShardCharts:
    shard: int
    charts: list[Chart]


@dataclass(frozen=True, slots=True)
class Charts:
    """What the dashboard's ``_charts.html`` shows: the overall charts, one row per shard that had anything in
    the hour (``quiet`` counts the others), or ``empty`` when no sample is in the window yet."""

    overall: list[Chart]
    shards: list[ShardCharts]
    quiet: int
    empty: bool
    every_s: int


# -- series ---------------------------------------------------------------------------------------------------


def drain_rates(samples: Sequence[ChartSample]) -> list[Point]:
    """Entries per second that left the shard between consecutive samples (oldest first), at the later sample's
    time. A drained total lower than the one before was reset (Redis went back in time): the entries since the
    reset are the new total."""
    rates = []
    for a, b in itertools.pairwise(samples):
        if b.t_ms <= a.t_ms:
            continue
        left = b.drained_total - a.drained_total
        if left < 0:
            left = b.drained_total
        rates.append((b.t_ms, left * 1000 / (b.t_ms - a.t_ms)))
    return rates


def depths(samples: Sequence[ChartSample]) -> list[Point]:
    return [(s.t_ms, float(s.depth)) for s in samples]


def ages(samples: Sequence[ChartSample]) -> list[Point]:
    """The oldest due entry's age; nothing waiting reads as 0."""
    return [(s.t_ms, float(s.oldest_age_ms or 0)) for s in samples]


def overall(per_shard: Sequence[Sequence[ChartSample]]) -> tuple[list[Point], list[Point], list[Point]]:
    """Depth and drain rate summed over the shards, and the oldest age of any, per sample time (one fan-out tick
    samples every shard at the same ``now``, so the times line up)."""
    depth: dict[int, float] = defaultdict(float)
    rate: dict[int, float] = defaultdict(float)
    age: dict[int, float] = defaultdict(float)
    for samples in per_shard:
        for t, v in depths(samples):
            depth[t] += v
        for t, v in drain_rates(samples):
            rate[t] += v
        for t, v in ages(samples):
            age[t] = max(age[t], v)
    return sorted(depth.items()), sorted(rate.items()), sorted(age.items())


# -- drawing ----------------------------------------------------------------------------------------------------


def segments(points: Sequence[Point], *, gap_ms: int) -> list[list[Point]]:
    """Runs of points no further apart than ``gap_ms``: each is one polyline (a missed sample breaks the line)."""
    runs: list[list[Point]] = []
    for p in points:
        if runs and p[0] - runs[-1][-1][0] <= gap_ms:
            runs[-1].append(p)
        else:
            runs.append([p])
    return runs


def svg(points: Sequence[Point], metric: Metric, *, now_ms: int, gap_ms: int, size: Size = BIG, label: str = "") -> str:
    """One chart of the hour before ``now_ms``: each run of points (``segments``) a polyline (a lone point a
    dot), the y axis from 0 to the hour's maximum (both labelled), ticks at −60, −45, −30, −15 min and now.
    ``label`` goes before the metric's title (a shard's number). Returns SVG markup whose every text is
    escaped."""
    start = now_ms - WINDOW_MS
    shown = [(min(t, now_ms), v) for t, v in points if t >= start]
    top = max((v for _, v in shown), default=0.0)
    scale = top if top > 0 else 1.0
    x0, x1 = size.left, size.width - size.right
    y0, y1 = size.top, size.height - size.bottom  # y1 is the axis (value 0)

    def x(t: int) -> float:
        return x0 + (x1 - x0) * (t - start) / WINDOW_MS

    def y(v: float) -> float:
        return y1 - (y1 - y0) * v / scale

    title = f"{label} {metric.title}".strip()
    heading = f"{title}, max {metric.text(top)} in the last hour" if shown else f"{title}: no samples in the last hour"
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="buffer-chart" width="{size.width}" height="{size.height}"'
        f' viewBox="0 0 {size.width} {size.height}" role="img" aria-label="{_e(heading)}">',
        f"<title>{_e(heading)}</title>",
        f'<text x="{x0}" y="12" font-size="11" font-weight="bold">{_e(title)}</text>',
        f'<line class="axis" x1="{x0}" y1="{y1}" x2="{x1}" y2="{y1}" stroke="#999" stroke-width="1"/>',
        f'<line class="axis" x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#999" stroke-width="1"/>',
        f'<text class="y-max" x="{x0 - 3}" y="{y0 + 4}" font-size="10" text-anchor="end">{_e(metric.text(top))}</text>',
        f'<text class="y-zero" x="{x0 - 3}" y="{y1}" font-size="10" text-anchor="end">0</text>',
    ]
    for minutes in TICKS_MIN:
        tx = _n(x(now_ms - minutes * 60_000))
        first = minutes == TICKS_MIN[0]
        text = "now" if minutes == 0 else f"−{minutes} min" if first and size.roomy else f"−{minutes}"
        anchor = "end" if minutes == 0 else "start" if first else "middle"
        out.append(f'<line class="tick" x1="{tx}" y1="{y1}" x2="{tx}" y2="{y1 + 3}" stroke="#999" stroke-width="1"/>')
        out.append(
            f'<text class="tick" x="{tx}" y="{size.height - 3}" font-size="10" text-anchor="{anchor}">{_e(text)}</text>'
        )
    for run in segments(shown, gap_ms=gap_ms):
        if len(run) == 1:
            ((t, v),) = run
            out.append(f'<circle class="series" cx="{_n(x(t))}" cy="{_n(y(v))}" r="1.5" fill="{metric.colour}"/>')
            continue
        coords = " ".join(f"{_n(x(t))},{_n(y(v))}" for t, v in run)
        out.append(
            f'<polyline class="series" points="{coords}" fill="none" stroke="{metric.colour}" stroke-width="1.5"/>'
        )
    out.append("</svg>")
    return "".join(out)


def dashboard_charts(per_shard: Sequence[Sequence[ChartSample]], *, now_ms: int, every_s: int) -> Charts:
    """The dashboard's charts from every shard's samples (shard order, oldest first): overall, then one row per
    shard with anything in the hour. The markup is safe to place in a page: ``svg`` escaped every text."""
    gap_ms = int(GAP_INTERVALS * every_s * 1000)
    start = now_ms - WINDOW_MS
    recent = [[s for s in samples if s.t_ms >= start - every_s * 1000] for samples in per_shard]
    if not any(s.t_ms >= start for samples in recent for s in samples):
        return Charts([], [], 0, True, every_s)

    def draw(series: Sequence[Point], metric: Metric, size: Size, label: str = "") -> Chart:
        return Chart(
            metric.title, mark_safe(svg(series, metric, now_ms=now_ms, gap_ms=gap_ms, size=size, label=label))
        )  # svg escaped every text

    depth, rate, age = overall(recent)
    rows = []
    for shard, samples in enumerate(recent):
        series = (depths(samples), drain_rates(samples), ages(samples))
        if not any(v for points in series for t, v in points if t >= start):
            continue
        label = f"shard {shard}"
        rows.append(
            ShardCharts(shard, [draw(p, m, SMALL, label) for p, m in zip(series, (DEPTH, RATE, AGE), strict=True)])
        )
    return Charts(
        overall=[
            draw(depth, DEPTH, BIG, "all shards"),
            draw(rate, RATE, BIG, "all shards"),
            draw(age, AGE, BIG, "all shards"),
        ],
        shards=rows,
        quiet=len(per_shard) - len(rows),
        empty=False,
        every_s=every_s,
    )


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _n(v: float) -> str:
    """A coordinate with one decimal at most: a sample's point costs about 12 bytes of markup."""
    return f"{v:.1f}".rstrip("0").rstrip(".")
