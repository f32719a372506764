"""The stale sweep's Redis side: where a shard's cycle stands, what a pass finds, and the pass's commit.

The sweep (``sweep/sweep.py``) makes the decisions — which orgs a pass visits, which envs to evict when a
cycle wraps — over the typed values read here, and hands back a ``SweepCommit`` that is written in one
MULTI/EXEC. Every read happens before any write, so a read that fails leaves the cycle untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import redis

from buffer.keys import ShardKeys
from buffer.scripts import Scripts


@dataclass(frozen=True, slots=True)
class SweepCycle:
    """Where the shard's sweep cycle stands, and the orgs of the pass about to run."""

    new_cycle: bool  # no frozen list: this pass starts a cycle and freezes the shard's orgs
    cursor: int  # index in the frozen list of this pass's first org
    orgs: list[int]  # this pass's orgs, in order
    frozen: list[int]  # new cycle only: the whole sorted org list to freeze; else empty
    wrapped: bool  # this pass reaches the end of the frozen list
    counted_envs: set[int]  # envs that have a stale count now
    visited_before: set[int]  # envs visited earlier in this cycle


@dataclass(frozen=True, slots=True)
class Found:
    """One entry a sweep pass reports (stale, expired lease or dead letter)."""

    run_id: str
    env_id: int
    org_id: int
    accepted_ms: int
    attempts: int
    last_error: str


@dataclass(frozen=True, slots=True)
class EnvScan:
    """One env of a visited org: how many queued entries are stale, and those found (a bounded list)."""

    env_id: int
    org_id: int
    stale: int
    entries: list[Found]


@dataclass(frozen=True, slots=True)
class StuckScan:
    envs: list[EnvScan]  # every env of the visited orgs, org by org (their queues)
    expired_total: int  # every expired lease of the shard …
    dead_total: int  # … and dead letter, counted
    expired: list[Found] = field(default_factory=list)  # … and at most ``max_entries`` of each listed
    dead: list[Found] = field(default_factory=list)
    # The shard's stale entries waiting out a retry (in no queue, whatever their org), found among the
    # first ``max_entries`` members of ``retry``. The sweep decides which pass of a cycle counts which.
    retrying: list[Found] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SweepCommit:
    """What a pass writes: the visited envs' counts (0 deletes the field), and the cycle's next state."""

    counts: dict[int, int]
    next_cursor: int
    wrapped: bool
    evict: Sequence[int] = ()  # at the wrap: envs whose counts go (not visited in the whole cycle)
    freeze: Sequence[int] = ()  # a new cycle that does not wrap at once: the org list to keep


def read_cycle(client: redis.Redis, k: ShardKeys, *, max_orgs: int) -> SweepCycle:
    """Two round trips: the cursor and the frozen list's length, then this pass's orgs and the cycle's sets."""
    pipe = client.pipeline(transaction=False)
    pipe.get(k.sweep_cursor)
    pipe.llen(k.sweep_orgs)
    cursor_raw, listed = pipe.execute()
    cursor = int(cursor_raw or 0)
    new_cycle = listed == 0
    pipe = client.pipeline(transaction=False)
    if new_cycle:
        pipe.smembers(k.orgs)
    else:
        pipe.lrange(k.sweep_orgs, cursor, cursor + max_orgs - 1)
    pipe.hkeys(k.sweep_counts)
    pipe.smembers(k.sweep_visited)
    batch_raw, counted_envs, visited_before = pipe.execute()
    counted = {int(env) for env in counted_envs}
    visited = {int(env) for env in visited_before}
    if new_cycle:
        frozen = sorted(int(org) for org in batch_raw)
        return SweepCycle(True, 0, frozen[:max_orgs], frozen, len(frozen) <= max_orgs, counted, visited)
    orgs = [int(org) for org in batch_raw]
    return SweepCycle(False, cursor, orgs, [], cursor + len(orgs) >= listed, counted, visited)


def scan(
    client: redis.Redis,
    scripts: Scripts,
    k: ShardKeys,
    orgs: Sequence[int],
    *,
    now_ms: int,
    older_than_ms: int,
    max_entries: int,
) -> StuckScan:
    """One round trip: ``find_stale`` over the shard's retry ZSET, then for each org's queues, then
    ``find_expired_and_dead`` for the shard.

    Retry goes first: an entry promoted to its queue meanwhile is then seen twice (the sweep keeps one),
    rather than not at all."""
    args: list[str | int] = [k.base, now_ms, older_than_ms, max_entries]
    pipe = client.pipeline(transaction=False)
    scripts.find_stale(keys=[k.retry], args=[*args, "retry"], client=pipe)
    for org in orgs:
        scripts.find_stale(keys=[k.org_envs(org)], args=[*args, "queues"], client=pipe)
    scripts.find_expired_and_dead(keys=[k.leases, k.dead], args=[k.base, now_ms, max_entries], client=pipe)
    replies = pipe.execute()
    retrying = _listed(replies[0])
    envs: list[EnvScan] = []
    for org, reply in zip(orgs, replies[1:-1], strict=True):
        for i in range(0, len(reply), 3):
            env, count, found = int(reply[i]), int(reply[i + 1]), reply[i + 2]
            entries = [
                Found(found[j], env, org, int(found[j + 1]), int(found[j + 2]), found[j + 3])
                for j in range(0, len(found), 4)
            ]
            envs.append(EnvScan(env, org, count, entries))
    expired_total, dead_total, expired, dead = replies[-1]
    return StuckScan(envs, int(expired_total), int(dead_total), _listed(expired), _listed(dead), retrying)


def _listed(flat: Sequence[str]) -> list[Found]:
    return [
        Found(flat[i], int(flat[i + 1]), int(flat[i + 2]), int(flat[i + 3]), int(flat[i + 4]), flat[i + 5])
        for i in range(0, len(flat), 6)
    ]


def commit(client: redis.Redis, k: ShardKeys, c: SweepCommit) -> None:
    """The pass's writes in one MULTI/EXEC: counts, then either the wrap (evict, delete the cycle) or the
    cycle's progress (visited envs, the frozen list of a new cycle, the cursor)."""
    pipe = client.pipeline(transaction=True)
    stale_counts = {env: n for env, n in c.counts.items() if n > 0}
    if stale_counts:
        pipe.hset(k.sweep_counts, mapping=stale_counts)  # type: ignore[arg-type]  # redis-py's mapping type is invariant
    zero = [env for env, n in c.counts.items() if n == 0]
    if zero:
        pipe.hdel(k.sweep_counts, *zero)
    if c.wrapped:
        if c.evict:
            pipe.hdel(k.sweep_counts, *c.evict)
        pipe.delete(k.sweep_visited, k.sweep_orgs, k.sweep_cursor)
    else:
        if c.counts:
            pipe.sadd(k.sweep_visited, *c.counts)
        if c.freeze:
            pipe.rpush(k.sweep_orgs, *c.freeze)
        pipe.set(k.sweep_cursor, c.next_cursor)
    pipe.execute()


def entry_statuses(client: redis.Redis, k: ShardKeys, run_ids: Sequence[str]) -> list[str | None]:
    """The ``status`` field of each entry (``None``: no hash any more), in one round trip."""
    if not run_ids:
        return []
    pipe = client.pipeline(transaction=False)
    for run_id in run_ids:
        pipe.hget(k.entry(run_id), "status")
    return list(pipe.execute())


def clear(client: redis.Redis, shard_keys: Sequence[ShardKeys]) -> None:
    """Delete the cycle state of these shards (the sweep is switched off: the stale gauge must read 0)."""
    keys = [key for k in shard_keys for key in k.sweep_state]
    if keys:
        client.delete(*keys)
