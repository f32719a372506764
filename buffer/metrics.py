"""Prometheus counters of the gate and the buffer (docs/architecture.md#telemetry); the drain's are in
``drainer.metrics``.

Label values are bounded sets (outcome, reason, result); never an env or org id — per-tenant detail goes
to structured logs and the admin.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

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
# Exported at 0 from the first scrape: the accepted/drained/buffered balance (ops/prometheus) reads it
# before the first accept, and increase() needs the series to exist before its first increment.
ACCEPTED.labels(result="accepted")

FAIL_OPEN = Counter(
    "mollifier_fail_open_total",
    "Triggers passed through because Redis (claims or gate) was unreachable.",
)

POSTGRES_DIVERSIONS = Counter(
    "mollifier_postgres_diversions_total",
    "Pass-through triggers accepted into the buffer because Postgres was unreachable.",
)

REDIS_BREAKER_OPENED = Counter(
    "mollifier_redis_breaker_opened_total",
    "Times a web process' circuit breaker opened (or re-opened after a failed probe) on the buffer's Redis.",
)

REDIS_BREAKER_REJECTED = Counter(
    "mollifier_redis_breaker_rejected_total",
    "Redis calls of the request path failed at once, without touching Redis, because the breaker was open.",
)

# Per process, so a gauge of each process summed over the live ones (``livesum``: gunicorn's child_exit marks a
# dead worker's file, mollifier_project/gunicorn.conf.py): how many processes have this breaker open now. The
# state lives in each process on purpose (buffer.breaker); Redis, the one shared place, is what is down.
REDIS_BREAKER_OPEN = Gauge(
    "mollifier_redis_breaker_open",
    "Processes whose circuit breaker on the buffer's Redis is not closed (open, or half-open awaiting a probe),"
    " by client profile (request | operator).",
    ["profile"],
    multiprocess_mode="livesum",
)
for _profile in ("request", "operator"):
    REDIS_BREAKER_OPEN.labels(profile=_profile)
DRAIN_KICKS = Counter(
    "mollifier_drain_kicks_total",
    "Drain tasks a web process sent on an accept into an idle shard (docs/architecture.md#kick), by result:"
    " sent | failed (the broker refused it or did not answer within a second; the fan-out's tick sends the shard"
    " instead) | skipped (not tried: a kick failed in this process within the last 5 s).",
    ["result"],
)
for _result in ("sent", "failed", "skipped"):
    DRAIN_KICKS.labels(result=_result)
