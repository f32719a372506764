"""Prometheus metrics of the gate and the buffer (DESIGN §12).

Label values are bounded sets (outcome, reason, result); never an env or org id — per-tenant detail goes
to structured logs and the admin.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

DECISIONS = Counter(
    "mollifier_decisions_total",
    "Gate evaluations by outcome (pass_through | mollify) and reason.",
    ["outcome", "reason"],
)

ACCEPTED = Counter(
    "mollifier_accepted_total",
    "buffer.accept calls by result (accepted | duplicate | idempotent | full).",
    ["result"],
)

FAIL_OPEN = Counter(
    "mollifier_fail_open_total",
    "Triggers passed through because Redis (claims or gate) was unreachable.",
)

POSTGRES_DIVERSIONS = Counter(
    "mollifier_postgres_diversions_total",
    "Pass-through triggers accepted into the buffer because Postgres was unreachable.",
)

# -- drain side: ``buffer.telemetry.record_round`` (once per drain round), ``Buffer.reclaim_expired`` ----------

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
