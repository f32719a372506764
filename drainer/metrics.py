"""Prometheus counters and histograms of the drain (docs/architecture.md#telemetry).

Recorded by ``drainer.telemetry.record_round`` once per round and by ``drainer.drain`` for reclaimed
leases. Label values are bounded sets (the drain outcome); never an env or org id.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

from prometheus_client import Counter, Histogram

DRAINED = Counter(
    "mollifier_drained_total",
    "Leased entries by drain outcome (created | existed | cancelled | failed | duplicate | dead | requeued | released).",
    ["outcome"],
)
# The outcomes by which an entry leaves the buffer, exported at 0 from the first scrape (the balance rule in
# ops/prometheus reads them; see buffer.metrics.ACCEPTED).
LEFT_BUFFER_OUTCOMES = ("created", "existed", "cancelled", "failed", "duplicate")
for _outcome in (*LEFT_BUFFER_OUTCOMES, "dead"):
    DRAINED.labels(outcome=_outcome)

RECLAIMED = Counter(
    "mollifier_reclaimed_total",
    "Expired leases reclaimed for a retry (a drainer died or stalled holding them).",
)

DWELL = Histogram(
    "mollifier_dwell_seconds",
    "Time from accept to materialisation of entries that left the buffer through a row.",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)

DATA_LOSSES = Counter(
    "mollifier_buffer_data_loss_events_total",
    "Checks that found a shard's buffer epoch gone or replaced: the buffer's Redis lost its data (drainer.epochs).",
)

SUCCESSORS = Counter(
    "mollifier_drain_successors_total",
    "Shard tasks that ended with work due and sent their own successor (docs/architecture.md#kick).",
)


BEAT_FENCED = Counter(
    "mollifier_beat_fenced_total",
    "Scheduled tasks dropped because the beat that sent them had lost the beat lease since (drainer.beat).",
)


def observe_many(histogram: Histogram, values: Sequence[float]) -> None:
    """``histogram.observe(v)`` for every one of ``values`` (an unlabelled histogram), with one increment per
    bucket instead of one per value. prometheus-client has no batch observe, and under the worker's
    multiprocess mode each observe is a locked write to a memory-mapped file: 4.5 µs a row against 0.3
    (``bench.row_path --multiprocess``, docs/architecture.md#drain-throughput). It updates the same bucket and
    sum values ``observe`` does (tests/drainer/test_metrics.py compares the two on the pinned client)."""
    if not values:
        return
    bounds = histogram._upper_bounds
    counts = [0] * len(bounds)
    for value in values:
        counts[bisect_left(bounds, value)] += 1  # observe's bucket: the first bound the value does not exceed
    histogram._sum.inc(sum(values))
    for bucket, count in zip(histogram._buckets, counts, strict=True):
        if count:
            bucket.inc(count)
