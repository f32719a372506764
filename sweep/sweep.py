"""The stale sweep: find entries that sit in the buffer too long, keep an alertable count
(docs/architecture.md#stale-sweep).

A drain that is stuck, slow or switched off shows up as queued entries getting old. Counting every entry
of every env each tick would cost O(buffer); instead each shard is swept in *cycles* of bounded *passes*:

* a cycle freezes the shard's org list (``sweep:orgs``, a sorted copy of ``orgs``) when it starts, so an
  org that joins mid-cycle waits for the next cycle and the cursor's meaning never shifts;
* a pass visits the next ``max_orgs`` orgs from the durable cursor (``sweep:cursor``) and, for each env
  of each, counts queued entries older than ``older_than_ms`` among the first ``max_entries`` of its queue
  (``lua/find_stale.lua``). The count goes into ``sweep:counts`` (a zero deletes the field) and the env
  into ``sweep:visited``;
* entries waiting out a retry are in no queue (and their env may be in no env set, their org in no org
  set), so each pass also reads the stale ones among the first ``max_entries`` members of the shard's
  ``retry`` ZSET. Each adds to its env's count in the pass that visits its org, or else at the wrap if the
  env was not visited earlier in the cycle (``_counts_retrying``): one pass writes an env per cycle;
* when a pass reaches the end of the list the cycle *wraps*: envs in the counts that were not visited in
  this cycle (fully drained, or their org left the shard) are removed — otherwise a drained env would hold
  the gauge up forever — and the cycle state is deleted, so the next pass freezes a fresh list.

The gauge ``mollifier_stale_entries`` is the sum of every shard's counts (``telemetry.collector``).

Each pass also lists the shard's expired leases (nobody reclaims them: the drainer is off or dying) and
dead letters (``lua/find_expired_and_dead.lua``), upserts a ``StuckEntry`` row per stale (queued or
retrying: kind STALE, whichever pass finds it), expired or dead entry, and resolves open rows whose entry
has left the buffer.

Redis is reached only through ``Buffer`` (``buffer.sweep_state``): this module decides which orgs a pass
visits and which envs a wrap evicts, over the typed values it reads.

Failure: every read happens before any write, and the Redis state is written in one MULTI/EXEC at the end,
so a read that fails raises with the cycle untouched — it never looks like an empty cycle, which would
wrap and evict every count. Postgres rows are written before the Redis state: if that fails the cursor
has not moved and the next pass repeats the same orgs (the upserts are idempotent).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from buffer.buffer import Buffer
from buffer.sweep_state import Found, SweepCommit
from buffer.values import EntryStatus
from mollifier_project.clock import from_ms
from mollifier_project.config import MollifierSettings
from sweep import services
from sweep.models import StuckKind
from sweep.services import Stuck

log = logging.getLogger(__name__)

RESOLVE_LIMIT = 1000  # open StuckEntry rows checked for resolution per pass


@dataclass(frozen=True, slots=True)
class SweepLimits:
    """How far one pass looks; built from the settings where the task starts."""

    older_than_ms: int  # STALE_THRESHOLD_S in ms: a queued entry older than this is stale
    max_orgs: int  # SWEEP_MAX_ORGS_PER_PASS
    max_entries: int  # SWEEP_MAX_ENTRIES_PER_ENV: entries scanned per env queue (and listed per kind)

    def __post_init__(self) -> None:
        if self.max_orgs < 1 or self.max_entries < 1:
            raise ValueError(f"max_orgs and max_entries must be >= 1, got {self.max_orgs!r}, {self.max_entries!r}")

    @classmethod
    def from_settings(cls, cfg: MollifierSettings) -> SweepLimits:
        return cls(
            older_than_ms=cfg.STALE_THRESHOLD_S * 1000,
            max_orgs=cfg.SWEEP_MAX_ORGS_PER_PASS,
            max_entries=cfg.SWEEP_MAX_ENTRIES_PER_ENV,
        )


@dataclass
class PassReport:
    """What one pass saw and did (the Celery task returns ``summary()``)."""

    shard: int
    new_cycle: bool = False
    orgs: list[int] = field(default_factory=list)  # visited this pass, in order
    wrapped: bool = False
    counts: dict[int, int] = field(default_factory=dict)  # env → stale count, envs visited this pass
    evicted: list[int] = field(default_factory=list)  # envs dropped from the counts at the wrap
    stale: list[Stuck] = field(default_factory=list)
    expired: list[Stuck] = field(default_factory=list)
    dead: list[Stuck] = field(default_factory=list)
    expired_total: int = 0
    dead_total: int = 0
    newly_stuck: int = 0
    resolved: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "shard": self.shard, "orgs": len(self.orgs), "wrapped": self.wrapped,
            "stale": sum(self.counts.values()), "expired_leases": self.expired_total, "dead": self.dead_total,
            "newly_stuck": self.newly_stuck, "resolved": self.resolved,
        }  # fmt: skip


def sweep_shard(buffer: Buffer, *, shard: int, now_ms: int, limits: SweepLimits) -> PassReport:
    """One pass over ``shard``. Call with the shard's sweep lock held (``sweep.tasks``).

    Steps: 1. read the cycle state (cursor, frozen list — or freeze a new one, in memory for now);
    2. count the stale entries of the next ``max_orgs`` orgs (and the retrying ones this pass counts) and
    list expired leases and dead letters;
    3. read which open ``StuckEntry`` rows have drained; 4. write the rows; 5. commit the cycle state
    (counts, visited, cursor; at the wrap evict unvisited envs and delete the cycle) in one transaction;
    6. log the per-tenant detail.
    """
    report = PassReport(shard=shard)

    # 1. Where the cycle stands.
    cycle = buffer.sweep_cycle(shard, max_orgs=limits.max_orgs)
    report.new_cycle, report.orgs, report.wrapped = cycle.new_cycle, cycle.orgs, cycle.wrapped

    # 2. Stale entries of this pass's orgs; the shard's expired leases and dead letters.
    scan = buffer.find_stuck(
        shard, report.orgs, now_ms=now_ms, older_than_ms=limits.older_than_ms, max_entries=limits.max_entries
    )
    env_org: dict[int, int] = {}
    for env in scan.envs:
        report.counts[env.env_id] = env.stale
        env_org[env.env_id] = env.org_id
        report.stale.extend(_stuck(found, StuckKind.STALE) for found in env.entries)
    in_queues, visiting = {s.run_id for s in report.stale}, set(report.orgs)
    for found in scan.retrying:
        if found.run_id in in_queues:  # promoted to its queue between the two reads: seen there already
            continue
        report.stale.append(_stuck(found, StuckKind.STALE))
        if _counts_retrying(found, cycle.visited_before, visiting=visiting, wrapped=report.wrapped):
            report.counts[found.env_id] = report.counts.get(found.env_id, 0) + 1
            env_org[found.env_id] = found.org_id
    # An env an operator paused is not stale on purpose: its count stays 0, so the alert does not page.
    switches = buffer.switches(shard)
    for env_id, org_id in env_org.items():
        if switches.paused(org_id, env_id):
            report.counts[env_id] = 0
    report.expired_total, report.dead_total = scan.expired_total, scan.dead_total
    report.expired = [_stuck(found, StuckKind.EXPIRED_LEASE) for found in scan.expired]
    report.dead = [_stuck(found, StuckKind.DEAD) for found in scan.dead]
    found_now = [*report.stale, *report.expired, *report.dead]

    # 3. Open rows whose entry has left the buffer (hash gone after the ack grace, or ACKED).
    seen = {s.run_id for s in found_now}
    drained = _drained(buffer, shard, [r for r in services.unresolved(shard, limit=RESOLVE_LIMIT) if r not in seen])

    # 4. Postgres first: if it fails, the cursor has not moved and the next pass repeats these orgs.
    now = from_ms(now_ms)
    new = services.record(found_now, shard=shard, now=now)
    report.newly_stuck = len(new)
    report.resolved = services.resolve(drained, now=now)

    # 5. The cycle state, atomically. At the wrap, envs counted but not visited in the whole cycle go.
    if report.wrapped:
        report.evicted = sorted(cycle.counted_envs - set(report.counts) - cycle.visited_before)
    buffer.commit_sweep(
        shard,
        SweepCommit(
            counts=report.counts,
            next_cursor=cycle.cursor + len(report.orgs),
            wrapped=report.wrapped,
            evict=report.evicted,
            freeze=cycle.frozen if cycle.new_cycle else (),
        ),
    )

    # 6. Per-tenant detail goes to the logs, never to metric labels.
    _log(report, env_org, new, now_ms)
    return report


def _counts_retrying(found: Found, visited_before: set[int], *, visiting: set[int], wrapped: bool) -> bool:
    """Whether this pass counts a stale entry waiting in ``retry`` for its env: the pass that visits the
    entry's org (the env's count is then its queue's plus its retrying entries), or else the wrap, for an env
    not visited earlier in the cycle — its org has no queued env, or joined after the cycle froze its list,
    or the entry turned stale after its org's pass. So each env is written by one pass per cycle: never a
    retry-only count over a count that included its queue, and an env that drains leaves at the wrap."""
    return found.org_id in visiting or (wrapped and found.env_id not in visited_before)


def _stuck(found: Found, kind: StuckKind) -> Stuck:
    return Stuck(
        run_id=found.run_id, env_id=found.env_id, org_id=found.org_id, kind=kind, accepted_ms=found.accepted_ms,
        attempts=found.attempts, last_error=found.last_error,
    )  # fmt: skip


def _drained(buffer: Buffer, shard: int, run_ids: Sequence[str]) -> list[str]:
    """Those of ``run_ids`` whose entry has left the buffer: no hash any more, or ACKED."""
    statuses = buffer.statuses(shard, run_ids)
    return [run_id for run_id, status in zip(run_ids, statuses, strict=True) if status in (None, EntryStatus.ACKED)]


SAMPLE_RUN_IDS = 5  # run ids a log line names, oldest first, of an env's newly stuck entries


def _log(report: PassReport, env_org: dict[int, int], new: Iterable[Stuck], now_ms: int) -> None:
    """One line per env per pass, not one per entry: an env of 10,000 stuck runs writes one line. It carries
    the env's stale count (when this pass counted it) and its newly stuck entries: how many, per kind, the
    oldest's age, and the first ``SAMPLE_RUN_IDS`` run ids. Every run is in the StuckEntry rows."""
    stuck_by_env: dict[int, list[Stuck]] = {}
    for s in new:
        stuck_by_env.setdefault(s.env_id, []).append(s)
    stale_envs = [env for env, count in report.counts.items() if count]
    for env in sorted({*stale_envs, *stuck_by_env}):
        stuck = sorted(stuck_by_env.get(env, []), key=lambda s: (s.accepted_ms, s.run_id))
        kinds: dict[str, int] = {}
        for s in stuck:
            kinds[s.kind.value] = kinds.get(s.kind.value, 0) + 1
        extra: dict[str, Any] = {
            "shard": report.shard, "org_id": env_org[env] if env in env_org else stuck[0].org_id, "env_id": env,
            "new_stuck": len(stuck), "kinds": kinds, "sample_run_ids": [s.run_id for s in stuck[:SAMPLE_RUN_IDS]],
        }  # fmt: skip
        if report.counts.get(env):
            extra["stale"] = report.counts[env]
        if stuck:
            extra["max_age_s"] = stuck[0].age_ms(now_ms) // 1000
            extra["max_attempts"] = max(s.attempts for s in stuck)
            extra["last_error"] = next((s.last_error for s in stuck if s.last_error), "")[:500]
        log.warning("env %s: %s stale entries, %s newly stuck", env, extra.get("stale", 0), len(stuck), extra=extra)
    if report.resolved:
        log.info(
            "%s stuck entries drained", report.resolved, extra={"shard": report.shard, "resolved": report.resolved}
        )


def clear_state(buffer: Buffer, shards: Iterable[int] | None = None) -> None:
    """Delete the sweep's cycle state (the sweep is switched off: the stale gauge must read 0)."""
    buffer.clear_sweep_state(shards)
