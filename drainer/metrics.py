"""Prometheus counters and histograms of the drain (docs/architecture.md#telemetry).

Recorded by ``drainer.telemetry.record_round`` once per round and by ``drainer.drain`` for reclaimed
leases. Label values are bounded sets (the drain outcome); never an env or org id.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

DRAINED = Counter(
    "mollifier_drained_total",
    "Leased entries by drain outcome (created | existed | cancelled | failed | dead | requeued | released).",
    ["outcome"],
)

RECLAIMED = Counter(
    "mollifier_reclaimed_total",
    "Expired leases reclaimed for a retry (a drainer died or stalled holding them).",
)

DWELL = Histogram(
    "mollifier_dwell_seconds",
    "Time from accept to materialisation of entries that left the buffer through a row.",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
