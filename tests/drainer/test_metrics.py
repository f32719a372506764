"""``drainer.metrics.observe_many`` (a round's dwell times in one go) exports exactly what observing each value
does, on the prometheus-client the project pins: values on a bucket's bound, between bounds, beyond the largest
finite one, zero."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from drainer.metrics import observe_many

BUCKETS = (0.1, 0.25, 1, 60)
VALUES = [0.0, 0.1, 0.1000001, 0.25, 0.3, 1.0, 59.999, 60.0, 61.0, 3600.0, 0.05, 0.25]


def samples(histogram: Histogram) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    [family] = histogram.collect()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples if not s.name.endswith("_created")
    }


def fresh() -> Histogram:
    return Histogram("dwell_seconds", "test", buckets=BUCKETS, registry=CollectorRegistry())


def test_observe_many_exports_what_observing_each_value_does():
    one_by_one, at_once = fresh(), fresh()
    for value in VALUES:
        one_by_one.observe(value)

    observe_many(at_once, VALUES)

    assert samples(at_once) == samples(one_by_one)
    assert samples(at_once)[("dwell_seconds_bucket", (("le", "0.1"),))] == 3  # 0.0, 0.1 and 0.05: a bound is inclusive


def test_observe_many_of_nothing_changes_nothing():
    histogram = fresh()

    observe_many(histogram, [])

    assert samples(histogram) == samples(fresh())
