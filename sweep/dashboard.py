"""The buffer dashboard's figures and health verdict (docs/architecture.md#operator-admin): pure functions over
the typed numbers ``Buffer`` reads, so every verdict is a unit test away. The views in ``sweep.admin.views``
read Redis once and hand the values here.

The verdict is the first of these that holds, with a reason an operator can act on:

1. **Postgres outage**: some shard's circuit is open (the drain stopped writing because Postgres is down).
2. **paused**: the drainer is switched off (``DRAINER_ENABLED``), so nothing leaves the buffer.
3. **stuck**: a shard has work due (a queue head of an unpaused env, a due retry or an expired lease) and
   made no drain progress (a round that acked or dead-lettered ≥ 1 entry, ``Buffer.count_drained``) for
   ``stuck_after_ms`` — counted from its last progress or from when its oldest due entry arrived, whichever
   is later. The bound is ``stuck_bound_ms``: a send's broker expiry plus one time budget
   (docs/architecture.md#operator-admin) — the drainer is down, wedged or not scheduled.
4. **backlogged**: entries drain, but slower than they should: the oldest is older than the stale
   threshold, or at the current rate the backlog takes longer than ``BACKLOG_ETA_S`` to clear.
5. **paused** (by an operator): some orgs or envs are paused and everything else flows.
6. **flowing**: otherwise.

Every rate and ETA shown is over the recent window (``buffer.stats.RECENT_WINDOW_MS``: the last full 10 s
bucket plus the current one), and a stuck shard's rate is shown as 0 and its ETA as never: the page cannot
say "stuck" above "draining 5.0/s".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from buffer.values import BeatLeaseState, NodeMemory, ShardStats

MEMORY_HIGH = 0.8  # used / maxmemory above which a master is "high" (alert MollifierBufferMemoryHigh)
MEMORY_FULL = 0.95  # … and "full" (alert MollifierBufferMemoryFull): triggers fail open at maxmemory
DEFAULT_STUCK_AFTER_MS = 22_000  # ``stuck_bound_ms`` at the default settings (1 s tick, 2 s budget)
BACKLOG_ETA_S = 60.0  # a backlog that needs longer than this at the current rate is a backlog


class Health(StrEnum):
    FLOWING = "flowing"
    BACKLOGGED = "backlogged"
    STUCK = "stuck"
    OUTAGE = "Postgres outage"
    PAUSED = "paused"


@dataclass(frozen=True, slots=True)
class Flags:
    """The feature flags of ``settings.MOLLIFIER`` the dashboard shows."""

    enabled: bool
    drainer_enabled: bool
    stale_sweep_enabled: bool
    shadow_mode: bool


@dataclass(frozen=True, slots=True)
class Paused:
    """How many orgs and envs of a shard an operator paused, and envs whose intake is closed."""

    orgs: int = 0
    envs: int = 0
    closed_envs: int = 0

    def __add__(self, other: Paused) -> Paused:
        return Paused(self.orgs + other.orgs, self.envs + other.envs, self.closed_envs + other.closed_envs)

    @property
    def any(self) -> bool:
        return bool(self.orgs or self.envs)


@dataclass(frozen=True, slots=True)
class ShardRow:
    """One shard as the dashboard shows it."""

    stats: ShardStats
    circuit_until_ms: int
    now_ms: int
    paused: Paused = field(default_factory=Paused)
    stuck_after_ms: int = DEFAULT_STUCK_AFTER_MS
    stale_cap: int | None = None  # SWEEP_MAX_ENTRIES_PER_ENV: an env counted at it may have more stale entries

    @property
    def stale_capped(self) -> bool:
        return self.stale_cap is not None and self.stats.stale_env_max >= self.stale_cap

    @property
    def stale_text(self) -> str:
        """The stale count, "≥ 1,000" when the sweep's per-env cap truncated it."""
        return count_text(self.stats.stale, at_least=self.stale_capped)

    @property
    def shard(self) -> int:
        return self.stats.shard

    @property
    def depth(self) -> int:
        return self.stats.depth

    @property
    def waiting(self) -> int:
        """Everything still to be written: queued, retrying and leased."""
        return self.stats.depth + self.stats.leased

    @property
    def oldest_age_ms(self) -> int | None:
        oldest = self.stats.oldest_accepted_ms
        return None if oldest is None else max(0, self.now_ms - oldest)

    @property
    def rate(self) -> float:
        """Entries that left the shard per second over the recent window (10–20 s); 0 once it is stuck."""
        return 0.0 if self.stuck else self.stats.recent_per_s

    @property
    def stalled_ms(self) -> int | None:
        """How long the shard has had work due without drain progress (``ShardStats.stalled_ms``)."""
        return self.stats.stalled_ms(self.now_ms)

    @property
    def eta_s(self) -> float | None:
        """Seconds until the backlog is gone at the current rate; 0 when empty, ``None`` when it never drains."""
        if self.waiting == 0:
            return 0.0
        return self.waiting / self.rate if self.rate > 0 else None

    @property
    def circuit_open(self) -> bool:
        return self.circuit_until_ms > self.now_ms

    @property
    def circuit_left_ms(self) -> int:
        return max(0, self.circuit_until_ms - self.now_ms)

    @property
    def stuck(self) -> bool:
        """Work due and no drain progress for ``stuck_after_ms`` (module docstring)."""
        stalled = self.stalled_ms
        return stalled is not None and stalled >= self.stuck_after_ms

    @property
    def idle(self) -> bool:
        """Nothing to show: no entries of any kind, circuit closed, nothing paused."""
        return not (self.waiting or self.stats.dead or self.circuit_open or self.paused.any or self.paused.closed_envs)

    # Display strings for the template.

    @property
    def oldest_text(self) -> str:
        return "—" if self.oldest_age_ms is None else duration(self.oldest_age_ms)

    @property
    def stalled_text(self) -> str:
        return age_text(self.stalled_ms)

    @property
    def eta_text(self) -> str:
        return eta(self.eta_s)

    @property
    def circuit_text(self) -> str:
        return f"open ({duration(self.circuit_left_ms)} left)" if self.circuit_open else "closed"

    def backlogged(self, stale_threshold_ms: int) -> bool:
        if self.waiting == 0:
            return False
        age = self.oldest_age_ms
        if age is not None and age >= stale_threshold_ms:
            return True
        eta = self.eta_s
        if eta is None:
            # Nothing drains. On a shard with paused orgs or envs that is what the operator asked for: their
            # entries wait (and do not age the shard); anything else old enough would be stuck.
            return not self.paused.any
        return eta > BACKLOG_ETA_S


@dataclass(frozen=True, slots=True)
class Verdict:
    health: Health
    reason: str  # one line, starting with the health: "stuck: shard 3 has 120 entries, …"
    notes: list[str] = field(default_factory=list)  # other things worth a look (dead letters, flags off)


@dataclass(frozen=True, slots=True)
class Totals:
    queued: int
    retrying: int
    leased: int
    expired_leases: int
    dead: int
    stale: int
    rate: float
    oldest_age_ms: int | None
    stale_capped: bool = False  # some env's count is at the sweep's per-env cap: ``stale`` is a lower bound

    @property
    def stale_text(self) -> str:
        return count_text(self.stale, at_least=self.stale_capped)

    @property
    def depth(self) -> int:
        return self.queued + self.retrying

    @property
    def waiting(self) -> int:
        return self.depth + self.leased

    @property
    def eta_s(self) -> float | None:
        """As ``ShardRow.eta_s``, for the whole buffer."""
        if self.waiting == 0:
            return 0.0
        return self.waiting / self.rate if self.rate > 0 else None


def stuck_bound_ms(send_expiry_s: float, time_budget_ms: int) -> int:
    """How long a shard with work due may go without drain progress before it is "stuck".

    A healthy shard with work is sent a task every tick; the task may wait in the broker for a worker up to
    its expiry (``drainer.tasks.send_expiry_s``: max(5 ticks, 10 budgets), so a shard behind busy workers
    is not called stuck), then its first round ends within one time budget. Past both, no worker took the
    shard's work. 22 s at the defaults (1 s tick, 2 s budget)."""
    return int(send_expiry_s * 1000) + time_budget_ms


def rows(
    stats: Sequence[ShardStats],
    circuits_until_ms: Sequence[int],
    *,
    now_ms: int,
    paused: Sequence[Paused] | None = None,
    stuck_after_ms: int = DEFAULT_STUCK_AFTER_MS,
    stale_cap: int | None = None,
) -> list[ShardRow]:
    """Zip what ``Buffer.shard_stats``, ``Buffer.circuits_until_ms`` and the switch counts read, per shard.
    ``stale_cap``: the sweep's per-env cap (SWEEP_MAX_ENTRIES_PER_ENV), so capped counts read "≥"."""
    paused = paused if paused is not None else [Paused()] * len(stats)
    return [
        ShardRow(s, until, now_ms, p, stuck_after_ms, stale_cap)
        for s, until, p in zip(stats, circuits_until_ms, paused, strict=True)
    ]


def totals(shards: Sequence[ShardRow]) -> Totals:
    ages = [r.oldest_age_ms for r in shards if r.oldest_age_ms is not None]
    return Totals(
        queued=sum(r.stats.queued for r in shards),
        retrying=sum(r.stats.retrying for r in shards),
        leased=sum(r.stats.leased for r in shards),
        expired_leases=sum(r.stats.expired_leases for r in shards),
        dead=sum(r.stats.dead for r in shards),
        stale=sum(r.stats.stale for r in shards),
        rate=sum(r.rate for r in shards),
        oldest_age_ms=max(ages) if ages else None,
        stale_capped=any(r.stale_capped for r in shards),
    )


def count_text(n: int, *, at_least: bool) -> str:
    """ "1,234", or "≥ 1,000" for a count known only as a lower bound."""
    return f"≥ {n:,}" if at_least else f"{n:,}"


def verdict(
    flags: Flags,
    shards: Sequence[ShardRow],
    *,
    stale_threshold_ms: int,
    fan_out_tick_age_ms: int | None = None,
    workers: Sequence[WorkerRow] | None = None,
) -> Verdict:
    """The health of the whole buffer and why (module docstring for the order). ``fan_out_tick_age_ms``: how
    long ago the drain fan-out last ticked (``None``: unknown, or never); with work due and no tick for longer
    than the stuck bound, a note says the fan-out (celery beat) is the likely cause. ``workers``: the drain
    workers' heartbeats (``None``: not read); notes name the stale ones, and say so when work is due and none
    is alive. Neither changes the health: that is judged by the drain's progress."""
    total = totals(shards)
    notes = _notes(flags, shards, total)
    due = [r for r in shards if r.stalled_ms is not None]
    if workers is not None:
        notes.extend(_worker_notes(flags, workers, work_due=bool(due)))
    if flags.drainer_enabled and due:
        bound = min(r.stuck_after_ms for r in due)
        if fan_out_tick_age_ms is None or fan_out_tick_age_ms >= bound:
            when = (
                "has never ticked on this Redis"
                if fan_out_tick_age_ms is None
                else (f"has not ticked for {duration(fan_out_tick_age_ms)}")
            )
            notes.append(f"the drain fan-out {when}: is celery beat running?")

    outage = [r for r in shards if r.circuit_open]
    if outage:
        reason = f"circuit open on {_count(len(outage), 'shard')} ({_ids(outage)})"
        longest = max(r.circuit_left_ms for r in outage)
        reason += f", retrying Postgres within {duration(longest)}; {_count(total.waiting, 'entry', 'entries')} wait"
        return Verdict(Health.OUTAGE, f"{Health.OUTAGE}: {reason}", notes)

    if not flags.drainer_enabled:
        reason = "the drainer is switched off (DRAINER_ENABLED is false)"
        if total.waiting:
            reason += f"; {_count(total.waiting, 'entry', 'entries')} wait, oldest {_age(total.oldest_age_ms)}"
        else:
            reason += "; the buffer is empty"
        return Verdict(Health.PAUSED, f"{Health.PAUSED}: {reason}", notes)

    stuck = sorted((r for r in shards if r.stuck), key=lambda r: (-(r.stalled_ms or 0), -r.waiting, r.shard))
    if stuck:
        worst = stuck[0]
        what = [f"{_count(worst.waiting, 'entry', 'entries')}"]
        if worst.oldest_age_ms is not None:
            what.append(f"oldest {duration(worst.oldest_age_ms)}")
        if worst.stats.expired_leases:
            what.append(f"{_count(worst.stats.expired_leases, 'expired lease')} not reclaimed")
        names = f"shard {worst.shard}" if len(stuck) == 1 else f"shards {_ids(stuck)}"
        reason = (
            f"no drain progress on {names} for {duration(worst.stalled_ms or 0)} (bound"
            f" {duration(worst.stuck_after_ms)}); shard {worst.shard} has {', '.join(what)}"
        )
        return Verdict(Health.STUCK, f"{Health.STUCK}: {reason}", notes)

    backlogged = [r for r in shards if r.backlogged(stale_threshold_ms)]
    if backlogged:
        waiting = sum(r.waiting for r in backlogged)
        ages = [r.oldest_age_ms for r in backlogged if r.oldest_age_ms is not None]
        rate = sum(r.rate for r in backlogged)
        reason = f"{_count(waiting, 'entry', 'entries')} wait on {_count(len(backlogged), 'shard')}"
        if ages:
            reason += f", oldest {duration(max(ages))}"
        reason += f", draining {rate:.1f}/s"
        if rate > 0:
            reason += f" (ETA {duration(int(waiting / rate * 1000))})"
        return Verdict(Health.BACKLOGGED, f"{Health.BACKLOGGED}: {reason}", notes)

    paused = sum((r.paused for r in shards), Paused())
    if paused.any:
        parts = [_count(n, noun) for n, noun in ((paused.orgs, "org"), (paused.envs, "env")) if n]
        reason = f"{' and '.join(parts)} paused by an operator (their entries wait); everything else flows"
        return Verdict(Health.PAUSED, f"{Health.PAUSED}: {reason}", notes)

    if total.waiting:
        reason = f"{_count(total.waiting, 'entry', 'entries')} wait, draining {total.rate:.1f}/s"
    else:
        reason = "the buffer is empty"
    return Verdict(Health.FLOWING, f"{Health.FLOWING}: {reason}", notes)


def _notes(flags: Flags, shards: Sequence[ShardRow], total: Totals) -> list[str]:
    notes = []
    if total.dead:
        notes.append(f"{_count(total.dead, 'dead letter')} wait for an operator (stuck entries, or redrive)")
    if not flags.enabled:
        notes.append("the gate is off (ENABLED is false): no new trigger is buffered")
    if not flags.stale_sweep_enabled:
        notes.append("the stale sweep is off (STALE_SWEEP_ENABLED is false): no stuck entries are recorded")
    closed = sum(r.paused.closed_envs for r in shards)
    if closed:
        notes.append(f"{_count(closed, 'env')} with intake closed by an operator")
    return notes


def _worker_notes(flags: Flags, workers: Sequence[WorkerRow], *, work_due: bool) -> list[str]:
    notes = []
    stale = [w for w in workers if w.stale]
    if stale:
        names = ", ".join(w.name for w in stale[:5]) + (", …" if len(stale) > 5 else "")
        notes.append(f"{_count(len(stale), 'drain worker')} stopped beating without shutting down: {names}")
    if flags.drainer_enabled and work_due and not any(not w.stale for w in workers):
        notes.append("no drain worker is alive: is a worker consuming the drain queue running?")
    return notes


@dataclass(frozen=True, slots=True)
class WorkerRow:
    """One drain worker on the dashboard: its Celery node name and how long ago it last beat."""

    name: str
    age_ms: int
    stale: bool

    @property
    def age_text(self) -> str:
        return duration(self.age_ms)


def worker_rows(heartbeats: Mapping[str, int], *, now_ms: int, stale_after_ms: int) -> list[WorkerRow]:
    """``Buffer.drain_workers`` as rows, by name; stale past ``stale_after_ms`` (``drainer.heartbeat``)."""
    return [
        WorkerRow(name, age, age > stale_after_ms)
        for name, age in sorted((name, max(0, now_ms - ms)) for name, ms in heartbeats.items())
    ]


def duration(ms: int | float) -> str:
    """A short human duration: "450 ms", "42 s", "11 min", "2 h 5 min", "3 d 4 h"."""
    if ms < 1000:
        return f"{int(ms)} ms"
    s = int(ms // 1000)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min" + (f" {s % 60} s" if s < 600 and s % 60 else "")
    if s < 86_400:
        return f"{s // 3600} h" + (f" {s % 3600 // 60} min" if s % 3600 // 60 else "")
    return f"{s // 86_400} d" + (f" {s % 86_400 // 3600} h" if s % 86_400 // 3600 else "")


def eta(seconds: float | None) -> str:
    if seconds is None:
        return "never (nothing drains)"
    if seconds == 0:
        return "—"
    return duration(math.ceil(seconds * 1000))


def age_text(ms: int | None) -> str:
    """How long ago something happened, or "never" (``None``: no record)."""
    return "never" if ms is None else duration(ms)


def beat_text(lease: BeatLeaseState | None, *, lease_enabled: bool, now_ms: int) -> str:
    """Which beat ticks (docs/operations.md#several-beats): the lease's holder and since when, or why none is named."""
    if not lease_enabled:
        return "lease off (every beat started ticks)"
    if lease is None:
        return "none holds the lease (no ticks until one takes it)"
    return f"{lease.holder}, lease epoch {lease.epoch}, ticking for {duration(max(0, now_ms - lease.since_ms))}"


def _age(ms: int | None) -> str:
    return "unknown" if ms is None else duration(ms)


def _count(n: int, singular: str, plural: str | None = None) -> str:
    return f"{n:,} {singular if n == 1 else plural or singular + 's'}"


def _ids(shards: Sequence[ShardRow], at_most: int = 10) -> str:
    ids = [str(r.shard) for r in shards[:at_most]]
    return ", ".join(ids) + (", …" if len(shards) > at_most else "")


@dataclass(frozen=True, slots=True)
class MemoryRow:
    """One master of the buffer's Redis on the dashboard: how full it is (docs/operations.md#buffer-memory)."""

    node: str
    used_bytes: int
    max_bytes: int

    @property
    def fraction(self) -> float | None:
        return self.used_bytes / self.max_bytes if self.max_bytes else None

    @property
    def level(self) -> str:
        """``ok``, ``high``, ``full`` (the alerts' thresholds) or ``no limit`` (no maxmemory: nothing to fill)."""
        fraction = self.fraction
        if fraction is None:
            return "no limit"
        return "full" if fraction > MEMORY_FULL else "high" if fraction > MEMORY_HIGH else "ok"

    @property
    def used_text(self) -> str:
        return _mib(self.used_bytes)

    @property
    def max_text(self) -> str:
        return _mib(self.max_bytes) if self.max_bytes else "no maxmemory"

    @property
    def percent_text(self) -> str:
        fraction = self.fraction
        return "—" if fraction is None else f"{fraction:.0%}"


def memory_rows(nodes: Sequence[NodeMemory]) -> list[MemoryRow]:
    return [MemoryRow(n.node, n.used_bytes, n.max_bytes) for n in nodes]


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
