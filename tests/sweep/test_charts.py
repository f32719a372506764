"""The dashboard charts' drawing (``sweep.charts``): pure functions from samples to SVG, parsed back with
``xml.etree`` to count what was drawn."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from buffer.values import ChartSample
from sweep import charts

NOW = 1_800_000_000_000
SVG = "{http://www.w3.org/2000/svg}"
EVERY_S = 15
GAP_MS = int(charts.GAP_INTERVALS * EVERY_S * 1000)


def sample(seconds_ago: float, depth: int = 0, drained: int = 0, age_ms: int | None = None) -> ChartSample:
    return ChartSample(NOW - int(seconds_ago * 1000), depth, drained, age_ms)


def parse(markup: str) -> ET.Element:
    root = ET.fromstring(markup)
    assert root.tag == f"{SVG}svg"
    return root


def polylines(root: ET.Element) -> list[list[tuple[float, float]]]:
    return [
        [tuple(map(float, p.split(","))) for p in line.get("points", "").split()]  # type: ignore[misc]
        for line in root.iter(f"{SVG}polyline")
    ]


def texts(root: ET.Element) -> list[str]:
    return [t.text or "" for t in root.iter(f"{SVG}text")]


# --------------------------------------------------------------------------------------------------- drain rate


def test_the_drain_rate_is_the_drained_totals_difference_over_the_time_between_samples():
    samples = [sample(30, drained=100), sample(15, drained=250), sample(0, drained=250)]

    assert charts.drain_rates(samples) == [(NOW - 15_000, 10.0), (NOW, 0.0)]


def test_the_drain_rate_counts_from_zero_across_a_counter_reset():
    # Redis lost its data between the 2nd and the 3rd sample: the total restarted from 0 and reached 30.
    samples = [sample(45, drained=1_000), sample(30, drained=1_150), sample(15, drained=30), sample(0, drained=180)]

    assert charts.drain_rates(samples) == [(NOW - 30_000, 10.0), (NOW - 15_000, 2.0), (NOW, 10.0)]


def test_overall_sums_depth_and_rate_and_takes_the_oldest_age_per_sample_time():
    shard0 = [sample(15, depth=5, drained=0, age_ms=1_000), sample(0, depth=3, drained=30, age_ms=4_000)]
    shard1 = [sample(15, depth=10, drained=7), sample(0, depth=0, drained=22, age_ms=None)]

    depth, rate, age = charts.overall([shard0, shard1])

    assert depth == [(NOW - 15_000, 15.0), (NOW, 3.0)]
    assert rate == [(NOW, 3.0)]  # 30 / 15 s + 15 / 15 s
    assert age == [(NOW - 15_000, 1_000.0), (NOW, 4_000.0)]


# ------------------------------------------------------------------------------------------------------ drawing


def test_a_chart_is_valid_svg_with_one_point_per_sample_axes_max_and_time_ticks():
    points = [(NOW - s * 1000, float(v)) for s, v in ((60, 0), (45, 1_000), (30, 2_500), (15, 400), (0, 0))]

    root = parse(charts.svg(points, charts.DEPTH, now_ms=NOW, gap_ms=GAP_MS))

    (line,) = polylines(root)
    assert len(line) == 5
    xs, ys = [x for x, _ in line], [y for _, y in line]
    assert xs == sorted(xs) and xs[-1] == charts.BIG.width - charts.BIG.right  # "now" at the right edge
    assert min(ys) == charts.BIG.top  # the maximum touches the top …
    assert ys[0] == ys[-1] == charts.BIG.height - charts.BIG.bottom  # … and 0 the x axis
    words = texts(root)
    assert "depth" in words[0] and "2,500" in words  # the title and the max label
    assert [w for w in words if w.startswith("−") or w == "now"] == ["−60 min", "−45", "−30", "−15", "now"]
    assert len(list(root.iter(f"{SVG}line"))) == 2 + len(charts.TICKS_MIN)  # two axes and a mark per tick
    assert "2,500" in root.findtext(f"{SVG}title", "")
    assert root.get("role") == "img" and "style" not in charts.svg(points, charts.DEPTH, now_ms=NOW, gap_ms=GAP_MS)
    small = texts(parse(charts.svg(points, charts.DEPTH, now_ms=NOW, gap_ms=GAP_MS, size=charts.SMALL)))
    assert [w for w in small if w.startswith("−") or w == "now"] == ["−60", "−45", "−30", "−15", "now"]  # no overlap


def test_a_missed_sample_breaks_the_line_and_a_lone_sample_is_a_dot():
    seconds = (600, 585, 570, 300, 120, 105)  # a gap of 270 s, then one alone, then a pair
    points = [(NOW - s * 1000, 1.0) for s in seconds]

    root = parse(charts.svg(points, charts.RATE, now_ms=NOW, gap_ms=GAP_MS))

    assert [len(line) for line in polylines(root)] == [3, 2]
    assert len(list(root.iter(f"{SVG}circle"))) == 1


def test_samples_older_than_the_hour_are_not_drawn():
    points = [(NOW - 3_700_000, 99.0), (NOW - 30_000, 1.0), (NOW - 15_000, 2.0)]

    root = parse(charts.svg(points, charts.DEPTH, now_ms=NOW, gap_ms=GAP_MS))

    assert [len(line) for line in polylines(root)] == [2]
    assert "2" in texts(root) and "99" not in texts(root)  # the max is the hour's


def test_every_text_is_escaped():
    label = 'shard <script>alert("x")</script> & co'

    markup = charts.svg([(NOW, 1.0)], charts.AGE, now_ms=NOW, gap_ms=GAP_MS, label=label)

    assert "<script>" not in markup
    root = parse(markup)
    assert texts(root)[0] == f"{label} oldest age"  # parsed back: the same text, not markup
    assert label in root.findtext(f"{SVG}title", "")


def test_a_chart_of_nothing_says_so():
    root = parse(charts.svg([], charts.DEPTH, now_ms=NOW, gap_ms=GAP_MS))

    assert polylines(root) == []
    assert "no samples in the last hour" in root.findtext(f"{SVG}title", "")


# -------------------------------------------------------------------------------------------------- the dashboard


def test_the_dashboard_draws_overall_and_only_the_shards_with_anything_in_the_hour():
    storm = [sample(s, depth=d, drained=n, age_ms=a) for s, d, n, a in ((45, 0, 0, None), (30, 900, 0, 20_000),
                                                                        (15, 300, 600, 5_000), (0, 0, 900, None))]  # fmt: skip
    quiet = [sample(s) for s in (45, 30, 15, 0)]

    drawn = charts.dashboard_charts([quiet, storm, quiet], now_ms=NOW, every_s=EVERY_S)

    assert not drawn.empty and drawn.quiet == 2
    assert [c.metric for c in drawn.overall] == ["depth", "drained/s", "oldest age"]
    assert [row.shard for row in drawn.shards] == [1]
    for chart in [*drawn.overall, *drawn.shards[0].charts]:
        parse(str(chart.svg))
    assert [len(polylines(parse(str(c.svg)))[0]) for c in drawn.overall] == [4, 3, 4]  # rates need two samples


@pytest.mark.parametrize("per_shard", [[[], []], [[sample(3_700)], []]])
def test_the_dashboard_is_empty_without_a_sample_in_the_hour(per_shard):
    assert charts.dashboard_charts(per_shard, now_ms=NOW, every_s=EVERY_S).empty
