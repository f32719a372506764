"""``/metrics``: the Prometheus exposition of every process's counters and the buffer's gauges.

Why this is its own app, above all the others: one scrape shows the numbers of every floor — the gate's
and the buffer's counters (``buffer.metrics``), the drain's (``drainer.metrics``), and gauges read from
Redis at scrape time (``Buffer.shard_stats``). Only a package that may import all of them can assemble
that, and none of the floors should know about the others' metrics to do it
(docs/architecture.md#telemetry).

Two kinds of numbers, kept apart on purpose:

* **Counters and histograms** are incremented where things happen — the gate, accept, the drain. Under
  gunicorn and Celery they live in many processes, so they run in prometheus-client's multiprocess mode:
  each process writes its values to files in ``PROMETHEUS_MULTIPROC_DIR`` and the scrape sums them.
* **Gauges** are read from Redis at scrape time (``BufferCollector``): depth, oldest age, leased, dead,
  stale total, drain rate and ETA (overall, the worst shard's, and rate and ETA per shard; the ETAs over the
  last 10–20 s), the liveness ages (the worst shard's last drain progress, the fan-out's last tick), the drain
  workers' heartbeats (alive, stale, the oldest), what operators switched (paused orgs and envs, closed
  intakes), the open drain circuits, and the memory of every master (used and max bytes, labelled ``node``).
  Redis is the
  truth shared by every process, so any web worker answers the same; a per-process gauge would be wrong
  the moment a second worker exists. The one exception is the Redis circuit breaker's state, which is per
  process by design (``buffer.breaker``): ``mollifier_redis_breaker_open`` is a multiprocess gauge summed over
  the live processes.

No label carries an env or org id (the series count would grow with the tenants); per-tenant detail goes
to the JSON logs and the admin. The gauge labels are ``shard``, on the per-shard series (0 … SHARDS − 1, fixed by
configuration), ``node``, on the memory series (host:port of each master, fixed by the deployment), ``beat``
on the active-beat series (host:pid of the beat holding the beat lease: one series at a time), and
``profile`` on the breaker gauge (request | operator).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

# Imported for their side effect: each registers its series, so every one shows from the first scrape.
import buffer.metrics  # noqa: F401
import drainer.metrics  # noqa: F401
from buffer.buffer import Buffer, BufferUnavailable
from drainer import heartbeat

log = logging.getLogger(__name__)
DEFAULT_WORKER_STALE_AFTER_MS = heartbeat.stale_after_ms(2_000)  # at the default DRAIN_TIME_BUDGET_MS


def drain_eta_s(backlog: int, drained_per_s: float) -> float:
    """Seconds to drain ``backlog`` at the recent rate: 0 when empty, +Inf when nothing drains (alertable)."""
    if backlog <= 0:
        return 0.0
    return backlog / drained_per_s if drained_per_s > 0 else math.inf


class BufferCollector:
    """Gauges computed from Redis when scraped. Without Redis only ``mollifier_redis_up 0`` is reported."""

    def __init__(
        self,
        buffer: Buffer,
        *,
        now_ms: int,
        stale_threshold_s: int,
        sweep_enabled: bool,
        worker_stale_after_ms: int = DEFAULT_WORKER_STALE_AFTER_MS,
    ) -> None:
        self.buffer = buffer
        self.now_ms = now_ms
        self.stale_threshold_s = stale_threshold_s
        self.sweep_enabled = sweep_enabled
        self.worker_stale_after_ms = worker_stale_after_ms

    def collect(self) -> Iterator[Metric]:
        threshold = GaugeMetricFamily(
            "mollifier_stale_threshold_seconds", "Age above which a queued entry is stale (STALE_THRESHOLD_S)."
        )
        threshold.add_metric([], self.stale_threshold_s)
        yield threshold
        try:
            stats = self.buffer.shard_stats(now_ms=self.now_ms)
        except BufferUnavailable as exc:  # bounded by the request profile's timeout, or at once by its breaker
            log.warning("metrics: Redis unreachable, buffer gauges left out: %r", exc)
            yield _gauge("mollifier_redis_up", "1 if the buffer's Redis answered this scrape.", 0)
            return
        yield _gauge("mollifier_redis_up", "1 if the buffer's Redis answered this scrape.", 1)
        depth = sum(s.depth for s in stats)
        leased = sum(s.leased for s in stats)
        rate = sum(s.drained_per_s for s in stats)
        oldest = min((s.oldest_accepted_ms for s in stats if s.oldest_accepted_ms is not None), default=None)
        yield _gauge("mollifier_buffer_depth", "Entries waiting to be drained (queued or retrying).", depth)
        yield _gauge("mollifier_buffer_leased", "Entries in flight (leased by a drainer), incl. expired.", leased)
        yield _gauge(
            "mollifier_buffer_expired_leases",
            "Leases past their deadline, not yet reclaimed (a drainer died; none reclaims).",
            sum(s.expired_leases for s in stats),
        )
        yield _gauge(
            "mollifier_buffer_dead", "Dead-lettered entries waiting for an operator.", sum(s.dead for s in stats)
        )
        yield _gauge(
            "mollifier_buffer_oldest_age_seconds",
            "Age of the oldest entry waiting to be leased, queued or retrying (0 when none waits).",
            0.0 if oldest is None else max(0, self.now_ms - oldest) / 1000,
        )
        yield _gauge(
            "mollifier_stale_entries",
            "Queued entries older than the stale threshold, as last counted by the sweep (0 while it is off).",
            sum(s.stale for s in stats) if self.sweep_enabled else 0,
        )
        yield _gauge("mollifier_drain_rate_per_second", "Entries leaving the buffer per second (last minute).", rate)
        yield _gauge(
            "mollifier_drain_eta_seconds",
            "Backlog (depth + leased) divided by the drain rate of the last 10–20 s; +Inf when a backlog does not drain.",
            drain_eta_s(depth + leased, sum(s.recent_per_s for s in stats)),
        )
        stalled = [ms for s in stats if (ms := s.stalled_ms(self.now_ms)) is not None]
        yield _gauge(
            "mollifier_drain_last_progress_age_seconds",
            "The worst shard with work due: seconds since its last drain progress (a round that acked or dead-lettered"
            " an entry) or since its oldest due entry arrived, whichever is later; 0 when no work is due.",
            max(stalled, default=0) / 1000,
        )
        try:
            tick_ms = self.buffer.fan_out_last_tick_ms()
        except BufferUnavailable:
            log.warning("metrics: the fan-out tick could not be read, its gauge left out", exc_info=True)
        else:
            yield _gauge(
                "mollifier_fan_out_last_tick_age_seconds",
                "Seconds since the drain fan-out (celery beat) last ticked; +Inf when it never did on this Redis.",
                math.inf if tick_ms is None else max(0, self.now_ms - tick_ms) / 1000,
            )
        yield from _beat(self.buffer)
        yield from self._steering()
        yield from self._workers()
        # Per shard: one lock holder drains a shard at a time, so one hot shard can lag however many workers
        # run while the overall ETA looks fine. The worst shard's ETA is one unlabelled series (what the alert
        # reads; a `shard` label on it would change whenever another shard became the worst); the per-shard
        # series say which shard it is. Their label is the shard number: a set bounded by SHARDS, never a tenant.
        etas = {s.shard: drain_eta_s(s.depth + s.leased, s.recent_per_s) for s in stats}
        yield _gauge(
            "mollifier_drain_eta_seconds_max",
            "The worst shard's drain ETA: its backlog divided by its own drain rate of the last 10–20 s (+Inf: none).",
            max(etas.values(), default=0.0),
        )
        yield _per_shard(
            "mollifier_shard_drain_rate_per_second",
            "Entries leaving this shard per second (last minute).",
            {s.shard: s.drained_per_s for s in stats},
        )
        yield _per_shard(
            "mollifier_shard_drain_eta_seconds",
            "This shard's backlog (depth + leased) divided by its drain rate of the last 10–20 s; +Inf when none.",
            etas,
        )
        yield from _memory(self.buffer)

    def _steering(self) -> Iterator[Metric]:
        """What operators switched (paused orgs and envs, closed intakes) and the shards whose Postgres-outage
        circuit is open: counts only, the names are on the dashboard (no tenant in a label)."""
        try:
            switches = self.buffer.switch_counts()
            circuits = self.buffer.circuits_until_ms()
        except BufferUnavailable:
            log.warning("metrics: switches and circuits could not be read, their gauges left out", exc_info=True)
            return
        yield _gauge(
            "mollifier_paused_orgs", "Orgs an operator paused (accepted, not drained).", sum(s[0] for s in switches)
        )
        yield _gauge(
            "mollifier_paused_envs", "Envs an operator paused (accepted, not drained).", sum(s[1] for s in switches)
        )
        yield _gauge(
            "mollifier_closed_intake_envs",
            "Envs whose intake an operator closed (their triggers answer 429).",
            sum(s[2] for s in switches),
        )
        yield _gauge(
            "mollifier_drain_circuits_open",
            "Shards whose drain circuit is open: the drain stopped writing them because Postgres failed.",
            sum(1 for until in circuits if until > self.now_ms),
        )

    def _workers(self) -> Iterator[Metric]:
        """The drain workers' heartbeats (``drainer.heartbeat``): how many beat lately, how many stopped beating
        without shutting down, and the oldest heartbeat of those listed."""
        try:
            workers = self.buffer.drain_workers()
        except BufferUnavailable:
            log.warning("metrics: drain worker heartbeats could not be read, their gauges left out", exc_info=True)
            return
        ages = [max(0, self.now_ms - ms) for ms in workers.values()]
        alive = sum(1 for age in ages if age <= self.worker_stale_after_ms)
        yield _gauge(
            "mollifier_drain_workers_alive", "Drain workers whose last heartbeat is within the stale bound.", alive
        )
        yield _gauge(
            "mollifier_drain_workers_stale",
            "Drain workers that stopped beating without a clean shutdown (killed, stopped, hung), for an hour at most.",
            len(ages) - alive,
        )
        yield _gauge(
            "mollifier_drain_worker_heartbeat_age_seconds_max",
            "Seconds since the heartbeat of the listed drain worker heard from longest ago (0 when none is listed).",
            max(ages, default=0) / 1000,
        )


def _beat(buffer: Buffer) -> Iterator[Metric]:
    """Which beat ticks: ``mollifier_beat_active_info{beat="host:pid"} 1`` for the holder of the beat lease (no
    sample while none holds it, and always with the lease off), and the epoch it holds (0: never taken). One
    label value at a time, a host:pid the deployment chose (docs/operations.md#several-beats)."""
    try:
        lease = buffer.beat_lease()
    except BufferUnavailable:
        log.warning("metrics: the beat lease could not be read, its gauges left out", exc_info=True)
        return
    info = GaugeMetricFamily(
        "mollifier_beat_active_info", "The celery beat that holds the beat lease (the one that ticks).", labels=["beat"]
    )
    if lease is not None:
        info.add_metric([lease.holder], 1)
    yield info
    yield _gauge(
        "mollifier_beat_lease_epoch",
        "How many times the beat lease was taken, as of its current holder (0: none holds it now).",
        0 if lease is None else lease.epoch,
    )


def _memory(buffer: Buffer) -> Iterator[Metric]:
    """Used and max bytes of every master of the buffer's Redis, labelled ``node`` (host:port: a set bounded by
    the deployment, never a tenant). At ``maxmemory`` with ``noeviction`` every trigger fails open to a direct
    write; the alerts read used / max per node (docs/operations.md#buffer-memory)."""
    try:
        nodes = buffer.memory()
    except BufferUnavailable:
        log.warning("metrics: INFO memory failed, memory gauges left out", exc_info=True)
        return
    used = GaugeMetricFamily(
        "mollifier_buffer_memory_used_bytes", "used_memory of the buffer's Redis.", labels=["node"]
    )
    top = GaugeMetricFamily(
        "mollifier_buffer_memory_max_bytes", "maxmemory of the buffer's Redis (0: no limit).", labels=["node"]
    )
    for n in nodes:
        used.add_metric([n.node], n.used_bytes)
        top.add_metric([n.node], n.max_bytes)
    yield used
    yield top


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation)
    family.add_metric([], value)
    return family


def _per_shard(name: str, documentation: str, values: dict[int, float]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=["shard"])
    for shard, value in sorted(values.items()):
        family.add_metric([str(shard)], value)
    return family


class _Delegate:
    """Expose an existing registry's metrics through another registry (single-process mode)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        return self.registry.collect()


def exposition(
    buffer: Buffer,
    *,
    now_ms: int,
    stale_threshold_s: int,
    sweep_enabled: bool,
    multiproc_dir: str = "",
    data_losses: int | None = None,
    worker_stale_after_ms: int = DEFAULT_WORKER_STALE_AFTER_MS,
) -> bytes:
    """The Prometheus text for one scrape.

    With ``multiproc_dir`` the counters and histograms are the sums over every process's files there;
    without it (tests, ``runserver``) they are this process's own. The gauges come from Redis either way,
    except ``data_losses``: the buffer data losses no operator has acknowledged, read from Postgres by the
    caller (``drainer.epochs``; Redis is what lost the data). ``None`` (Postgres unreachable) leaves it out.
    """
    registry = CollectorRegistry(auto_describe=False)
    if multiproc_dir:
        MultiProcessCollector(registry, path=multiproc_dir)
    else:
        registry.register(_Delegate(REGISTRY))
    registry.register(
        BufferCollector(
            buffer,
            now_ms=now_ms,
            stale_threshold_s=stale_threshold_s,
            sweep_enabled=sweep_enabled,
            worker_stale_after_ms=worker_stale_after_ms,
        )
    )
    if data_losses is not None:
        registry.register(_Fixed(_gauge(DATA_LOSSES_UNACKNOWLEDGED, DATA_LOSSES_HELP, data_losses)))
    return generate_latest(registry)


DATA_LOSSES_UNACKNOWLEDGED = "mollifier_buffer_data_losses_unacknowledged"
DATA_LOSSES_HELP = (
    "Buffer data losses (a shard's epoch gone or replaced: Redis lost buffered runs) no operator has acknowledged."
)


class _Fixed:
    """One metric family computed before the scrape."""

    def __init__(self, family: Metric) -> None:
        self.family = family

    def collect(self) -> Iterable[Metric]:
        return [self.family]
