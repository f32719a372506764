"""What the drain records per round: outcome counters, dwell times, the shard's drain rate, log lines.

Counters and histograms (``drainer.metrics``) run in prometheus-client's multiprocess mode under Celery,
so ``/metrics`` (``telemetry/``) sums every worker's values. The drain rate is kept in Redis instead
(``Buffer.count_drained``), because the ETA gauge must read the same from any web worker. Per-env detail
goes to one JSON log line per env, never to a metric label.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

from buffer.buffer import BufferUnavailable
from buffer.drain_side import DrainBuffer
from buffer.values import Entry
from drainer import metrics
from drainer.report import Report

log = logging.getLogger(__name__)


def record_round(
    buffer: DrainBuffer, *, shard: int, report: Report, entries: Sequence[Entry], acked: Sequence[str], now_ms: int
) -> None:
    """Count one drain round: outcomes, dwell of the acked entries, the shard's drain-rate bucket, and one
    JSON log line per env that had entries leave the buffer.

    Called after the ack, so it must never change the drain's result: a Redis error while writing the
    rate bucket is logged, not raised.
    """
    for outcome, count in report.outcome_counts().items():
        metrics.DRAINED.labels(outcome=outcome).inc(count)
    acked_ids = set(acked)
    per_env: dict[tuple[int, int], list[int]] = defaultdict(list)
    dwells_s: list[float] = []
    for entry in entries:
        if entry.run_id in acked_ids:
            dwell_ms = max(0, now_ms - entry.accepted_ms)
            dwells_s.append(dwell_ms / 1000)
            per_env[(entry.org_id, entry.env_id)].append(dwell_ms)
    metrics.observe_many(metrics.DWELL, dwells_s)
    left = len(acked_ids) + report.dead
    if left:
        try:
            buffer.count_drained(shard, left, now_ms=now_ms)
        except BufferUnavailable:
            log.warning("could not record the drain rate of shard %s", shard, extra={"shard": shard}, exc_info=True)
    for (org_id, env_id), dwells in per_env.items():
        log.info(
            "drained %s entries of env %s", len(dwells), env_id,
            extra={"shard": shard, "org_id": org_id, "env_id": env_id, "drained": len(dwells),
                   "max_dwell_ms": max(dwells)},
        )  # fmt: skip
