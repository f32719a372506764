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
# The outcomes by which an entry leaves the buffer, exported at 0 from the first scrape (the balance rule in
# ops/prometheus reads them; see buffer.metrics.ACCEPTED).
LEFT_BUFFER_OUTCOMES = ("created", "existed", "cancelled", "failed")
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
