"""The stale sweep: find entries that sit in the buffer too long, keep an alertable count (DESIGN §11).

A drain that is stuck, slow or switched off shows up as queued entries getting old. Counting every entry
of every env each tick would cost O(buffer); instead each shard is swept in *cycles* of bounded *passes*:

* a cycle freezes the shard's org list (``sweep:orgs``, a sorted copy of ``orgs``) when it starts, so an
  org that joins mid-cycle waits for the next cycle and the cursor's meaning never shifts;
* a pass visits the next ``max_orgs`` orgs from the durable cursor (``sweep:cursor``) and, for each env
  of each, counts queued entries older than ``older_than_ms`` among the first ``max_entries`` of its queue
  (``lua/find_stale.lua``). The count goes into ``sweep:counts`` (a zero deletes the field) and the env
  into ``sweep:visited``;
* when a pass reaches the end of the list the cycle *wraps*: envs in the counts that were not visited in
  this cycle (fully drained, or their org left the shard) are removed — otherwise a drained env would hold
  the gauge up forever — and the cycle state is deleted, so the next pass freezes a fresh list.

The gauge ``mollifier_stale_entries`` is the sum of every shard's counts (``buffer.telemetry``).

Each pass also lists the shard's expired leases (nobody reclaims them: the drainer is off or dying) and
dead letters (``lua/find_expired_and_dead.lua``), upserts a ``StuckEntry`` row per stale, expired or dead
entry, and resolves open rows whose entry has left the buffer.

Failure: every read happens before any write, and the Redis state is written in one MULTI/EXEC at the end,
so a read that fails raises with the cycle untouched — it never looks like an empty cycle, which would
wrap and evict every count. Postgres rows are written before the Redis state: if that fails the cursor
has not moved and the next pass repeats the same orgs (the upserts are idempotent).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from buffer.buffer import Buffer, EntryStatus
from sweep import services
from sweep.models import StuckKind
from sweep.services import Stuck

log = logging.getLogger(__name__)

RESOLVE_LIMIT = 1000  # open StuckEntry rows checked for resolution per pass


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


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def sweep_shard(
    buffer: Buffer, *, shard: int, now_ms: int, older_than_ms: int, max_orgs: int, max_entries: int
) -> PassReport:
    """One pass over ``shard``. Call with the shard's sweep lock held (``sweep.tasks``).

    Steps: 1. read the cycle state (cursor, frozen list — or freeze a new one, in memory for now);
    2. count the stale entries of the next ``max_orgs`` orgs and list expired leases and dead letters;
    3. read which open ``StuckEntry`` rows have drained; 4. write the rows; 5. commit the cycle state
    (counts, visited, cursor; at the wrap evict unvisited envs and delete the cycle) in one transaction;
    6. log the per-tenant detail.
    """
    if max_orgs < 1 or max_entries < 1:
        raise ValueError(f"max_orgs and max_entries must be >= 1, got {max_orgs!r}, {max_entries!r}")
    k = buffer.keys(shard)
    client = buffer.client
    report = PassReport(shard=shard)

    # 1. Where the cycle stands.
    cursor_raw, listed = client.pipeline(transaction=False).get(k.sweep_cursor).llen(k.sweep_orgs).execute()
    cursor = int(cursor_raw or 0)
    report.new_cycle = listed == 0
    pipe = client.pipeline(transaction=False)
    if report.new_cycle:
        pipe.smembers(k.orgs)
    else:
        pipe.lrange(k.sweep_orgs, cursor, cursor + max_orgs - 1)
    pipe.hkeys(k.sweep_counts).smembers(k.sweep_visited)
    batch_raw, counted_envs, visited_before = pipe.execute()
    if report.new_cycle:
        frozen = sorted(int(org) for org in batch_raw)
        cursor = 0
        report.orgs = frozen[:max_orgs]
        report.wrapped = len(frozen) <= max_orgs
    else:
        frozen = []
        report.orgs = [int(org) for org in batch_raw]
        report.wrapped = cursor + len(report.orgs) >= listed

    # 2. Stale entries of this pass's orgs; the shard's expired leases and dead letters.
    pipe = client.pipeline(transaction=False)
    for org in report.orgs:
        buffer.scripts.find_stale(
            keys=[k.org_envs(org)], args=[k.base, now_ms, older_than_ms, max_entries], client=pipe
        )
    buffer.scripts.find_expired_and_dead(keys=[k.leases, k.dead], args=[k.base, now_ms, max_entries], client=pipe)
    replies = pipe.execute()
    env_org: dict[int, int] = {}
    for org, reply in zip(report.orgs, replies[:-1], strict=True):
        for i in range(0, len(reply), 3):
            env, count, found = int(reply[i]), int(reply[i + 1]), reply[i + 2]
            report.counts[env] = count
            env_org[env] = org
            report.stale.extend(
                Stuck(run_id=found[j], env_id=env, org_id=org, kind=StuckKind.STALE, accepted_ms=int(found[j + 1]),
                      attempts=int(found[j + 2]), last_error=found[j + 3])
                for j in range(0, len(found), 4)
            )  # fmt: skip
    expired_total, dead_total, expired, dead = replies[-1]
    report.expired_total, report.dead_total = int(expired_total), int(dead_total)
    report.expired = _parse_listed(expired, StuckKind.EXPIRED_LEASE)
    report.dead = _parse_listed(dead, StuckKind.DEAD)
    found_now = [*report.stale, *report.expired, *report.dead]

    # 3. Open rows whose entry has left the buffer (hash gone after the ack grace, or ACKED).
    seen = {s.run_id for s in found_now}
    drained = _drained(buffer, shard, [r for r in services.unresolved(shard, limit=RESOLVE_LIMIT) if r not in seen])

    # 4. Postgres first: if it fails, the cursor has not moved and the next pass repeats these orgs.
    now = _dt(now_ms)
    new = services.record(found_now, shard=shard, now=now)
    report.newly_stuck = len(new)
    report.resolved = services.resolve(drained, now=now)

    # 5. The cycle state, atomically.
    visited_now = set(report.counts)
    pipe = client.pipeline(transaction=True)
    stale_counts = {env: n for env, n in report.counts.items() if n > 0}
    if stale_counts:
        pipe.hset(k.sweep_counts, mapping=stale_counts)
    zero = [env for env, n in report.counts.items() if n == 0]
    if zero:
        pipe.hdel(k.sweep_counts, *zero)
    if report.wrapped:
        visited = visited_now | {int(env) for env in visited_before}
        report.evicted = sorted({int(env) for env in counted_envs} - visited)
        if report.evicted:
            pipe.hdel(k.sweep_counts, *report.evicted)
        pipe.delete(k.sweep_visited, k.sweep_orgs, k.sweep_cursor)
    else:
        if visited_now:
            pipe.sadd(k.sweep_visited, *visited_now)
        if report.new_cycle:
            pipe.rpush(k.sweep_orgs, *frozen)
        pipe.set(k.sweep_cursor, cursor + len(report.orgs))
    pipe.execute()

    # 6. Per-tenant detail goes to the logs, never to metric labels.
    _log(report, env_org, new, now_ms)
    return report


def _parse_listed(flat: Sequence[str], kind: StuckKind) -> list[Stuck]:
    return [
        Stuck(run_id=flat[i], env_id=int(flat[i + 1]), org_id=int(flat[i + 2]), kind=kind,
              accepted_ms=int(flat[i + 3]), attempts=int(flat[i + 4]), last_error=flat[i + 5])
        for i in range(0, len(flat), 6)
    ]  # fmt: skip


def _drained(buffer: Buffer, shard: int, run_ids: Sequence[str]) -> list[str]:
    """Those of ``run_ids`` whose entry has left the buffer: no hash any more, or ACKED."""
    if not run_ids:
        return []
    k = buffer.keys(shard)
    pipe = buffer.client.pipeline(transaction=False)
    for run_id in run_ids:
        pipe.hget(k.entry(run_id), "status")
    statuses = pipe.execute()
    return [run_id for run_id, status in zip(run_ids, statuses, strict=True) if status in (None, EntryStatus.ACKED)]


def _log(report: PassReport, env_org: dict[int, int], new: Iterable[Stuck], now_ms: int) -> None:
    for env, count in report.counts.items():
        if count:
            log.warning(
                "%s stale entries in env %s", count, env,
                extra={"shard": report.shard, "org_id": env_org[env], "env_id": env, "stale": count},
            )  # fmt: skip
    for s in new:
        log.warning(
            "stuck entry %s (%s)", s.run_id, s.kind.value,
            extra={"shard": report.shard, "org_id": s.org_id, "env_id": s.env_id, "run_id": s.run_id,
                   "kind": s.kind.value, "age_s": s.age_ms(now_ms) // 1000, "attempts": s.attempts,
                   "last_error": s.last_error},
        )  # fmt: skip
    if report.resolved:
        log.info(
            "%s stuck entries drained", report.resolved, extra={"shard": report.shard, "resolved": report.resolved}
        )


def clear_state(buffer: Buffer, shards: Iterable[int] | None = None) -> None:
    """Delete the sweep's cycle state (the sweep is switched off: the stale gauge must read 0)."""
    keys = [
        key for shard in (range(buffer.shards) if shards is None else shards) for key in buffer.keys(shard).sweep_state
    ]
    buffer.client.delete(*keys)
