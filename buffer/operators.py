"""What the operator screens read from the buffer, and the dead-lettering of a deleted env's entries
(docs/architecture.md#operator-admin). ``Buffer`` calls these; nothing else does.

Every read here is bounded by what one page shows, not by the number of tenants: the dashboard's circuits
are one pipelined round trip over the shards, a shard page is one ``top_envs.lua`` call (O(orgs + envs of
that shard), a reply of at most ``limit`` rows), an env page reads the head of one queue, and finding a
run by id alone asks each shard's entry key once, all in one round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis

from buffer.keys import ShardKeys
from buffer.scripts import Scripts

# The deletion warning examines at most this many members of each of retry, leases and dead of the shard.
CENSUS_SCAN = 1000
DEAD_LETTER_BATCH = 1000


@dataclass(frozen=True, slots=True)
class OrgDepth:
    org_id: int
    depth: int  # entries in the queues of its envs
    envs: int  # its envs with a non-empty queue


@dataclass(frozen=True, slots=True)
class EnvDepth:
    org_id: int
    env_id: int
    depth: int  # entries in its queue
    head_accepted_ms: int | None  # when its oldest queued entry was accepted


@dataclass(frozen=True, slots=True)
class ShardTop:
    """One shard's deepest orgs and envs (``lua/top_envs.lua``): queue lengths only."""

    shard: int
    orgs_total: int  # orgs with a non-empty queue
    envs_total: int  # envs with a non-empty queue
    queued: int  # the sum of their queue lengths
    orgs: list[OrgDepth]  # at most the limit, deepest first
    envs: list[EnvDepth]  # at most the limit, deepest first


@dataclass(frozen=True, slots=True)
class EnvCensus:
    """An env's entries in the buffer (``lua/env_census.lua``).

    ``queued`` is its queue's length, exact. ``retrying``, ``leased`` and ``dead`` are counted among the
    first ``CENSUS_SCAN`` members of the shard's retry, leases and dead sets: exact when ``complete``,
    else lower bounds.
    """

    env_id: int
    queued: int
    retrying: int
    leased: int
    dead: int
    complete: bool

    @property
    def live(self) -> int:
        """Entries still to be written as rows: what deleting the env would strand."""
        return self.queued + self.retrying + self.leased


def circuits_until_ms(client: redis.Redis, shard_keys: Sequence[ShardKeys]) -> list[int]:
    pipe = client.pipeline(transaction=False)
    for k in shard_keys:
        pipe.hget(k.drain_circuit, "until_ms")
    return [int(v or 0) for v in pipe.execute()]


def switch_counts(client: redis.Redis, shard_keys: Sequence[ShardKeys]) -> list[tuple[int, int, int]]:
    pipe = client.pipeline(transaction=False)
    for k in shard_keys:
        pipe.scard(k.paused_orgs)
        pipe.scard(k.paused_envs)
        pipe.scard(k.closed_envs)
    counts = [int(v) for v in pipe.execute()]
    return [(counts[i], counts[i + 1], counts[i + 2]) for i in range(0, len(counts), 3)]


def top_envs(scripts: Scripts, k: ShardKeys, *, limit: int) -> ShardTop:
    (orgs_total, envs_total, queued), orgs, envs = scripts.top_envs(keys=[k.orgs], args=[k.base, limit])
    return ShardTop(
        shard=k.shard,
        orgs_total=int(orgs_total),
        envs_total=int(envs_total),
        queued=int(queued),
        orgs=[OrgDepth(int(orgs[i]), int(orgs[i + 1]), int(orgs[i + 2])) for i in range(0, len(orgs), 3)],
        envs=[
            EnvDepth(
                int(envs[i]), int(envs[i + 1]), int(envs[i + 2]), None if int(envs[i + 3]) < 0 else int(envs[i + 3])
            )
            for i in range(0, len(envs), 4)
        ],
    )


def queue_head(client: redis.Redis, k: ShardKeys, env_id: int, *, limit: int) -> list[str]:
    return [str(run_id) for run_id in client.lrange(k.queue(env_id), 0, limit - 1)]


def find_entry_replies(
    client: redis.Redis, scripts: Scripts, shard_keys: Sequence[ShardKeys], run_id: str
) -> list[list[str]]:
    """The entry hash of ``run_id`` as every shard has it (a flat HGETALL each), in one round trip."""
    pipe = client.pipeline(transaction=False)
    for k in shard_keys:
        scripts.get(keys=[k.entry(run_id), k.snapshot(run_id)], client=pipe)
    return pipe.execute()


def env_census(scripts: Scripts, k: ShardKeys, env_ids: Sequence[int], *, scan: int) -> list[EnvCensus]:
    if not env_ids:
        return []
    reply = scripts.env_census(keys=[k.retry, k.leases, k.dead], args=[k.base, scan, *env_ids])
    complete = reply[0] == 1
    out = []
    for i, env_id in enumerate(env_ids):
        queued, retrying, leased, dead = (int(v) for v in reply[1 + 4 * i : 5 + 4 * i])
        out.append(EnvCensus(env_id, queued, retrying, leased, dead, complete=complete))
    return out


def dead_letter_env(
    scripts: Scripts, k: ShardKeys, *, org_id: int, env_id: int, now_ms: int, reason: str, batch: int
) -> int:
    """Call ``lua/dead_letter_env.lua`` until the env's queue is empty and retry and leases have been
    examined; returns how many entries became DEAD."""
    keys = [k.queue(env_id), k.org_envs(org_id), k.orgs, k.leases, k.retry, k.dead]
    total, retry_at, leases_at = 0, 0, 0
    while True:
        moved, queue_left, retry_at, leases_at = scripts.dead_letter_env(
            keys=keys, args=[k.base, env_id, org_id, now_ms, reason, batch, retry_at, leases_at]
        )
        total += int(moved)
        if int(queue_left) == 0 and int(retry_at) < 0 and int(leases_at) < 0:
            return total
