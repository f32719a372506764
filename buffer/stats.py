"""Shard statistics read from Redis: what the scrape-time gauges and the demo's progress line show.

Two sources per shard, in one pipelined round trip for every shard: ``lua/shard_stats.lua`` (depth, leased,
retrying, dead, oldest waiting entry, stale count) and the drain-rate buckets. The buckets are written by
``Buffer.count_drained`` as entries leave the buffer: one counter per 10 s and shard, kept for just over
the rate window, so the rate needs no per-process state and any web worker answers the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from buffer.keys import ShardKeys
from buffer.scripts import Scripts

BUCKET_MS = 10_000  # drained-entry counts are kept per 10 s bucket and shard …
RATE_WINDOW_MS = 60_000  # … and the drain rate is averaged over the last minute plus the current bucket
BUCKET_TTL_MS = RATE_WINDOW_MS + 2 * BUCKET_MS


@dataclass(frozen=True, slots=True)
class ShardStats:
    """One shard as ``lua/shard_stats.lua`` sees it, plus its drain rate."""

    shard: int
    queued: int  # in env queues
    retrying: int  # waiting out a backoff
    leased: int  # in flight, including expired leases
    expired_leases: int
    dead: int
    oldest_accepted_ms: int | None  # oldest queue head or retrying entry (the first 100 due are read)
    stale: int  # sum of the sweep's counts hash
    drained_per_s: float  # entries that left the buffer per second, over the rate window

    @property
    def depth(self) -> int:
        """Entries waiting to be leased (queued or retrying)."""
        return self.queued + self.retrying


def bucket_of(now_ms: int) -> int:
    """The start of the drain-rate bucket that ``now_ms`` falls in."""
    return now_ms - now_ms % BUCKET_MS


def read(client: redis.Redis, scripts: Scripts, shard_keys: list[ShardKeys], *, now_ms: int) -> list[ShardStats]:
    """Every shard's numbers in one pipelined round trip (a ``shard_stats`` call and the rate buckets each)."""
    first_bucket = bucket_of(now_ms) - RATE_WINDOW_MS
    buckets = range(first_bucket, now_ms + 1, BUCKET_MS)
    window_s = (now_ms - first_bucket) / 1000
    pipe = client.pipeline(transaction=False)
    for k in shard_keys:
        scripts.shard_stats(
            keys=[k.queued, k.heads, k.leases, k.retry, k.dead, k.sweep_counts, k.paused_orgs, k.paused_envs],
            args=[k.base, now_ms],
            client=pipe,
        )
        pipe.mget([k.drained(bucket) for bucket in buckets])
    replies = pipe.execute()
    stats = []
    for i, k in enumerate(shard_keys):
        queued, retrying, leased, expired, dead, oldest, stale = (int(v) for v in replies[2 * i])
        drained = sum(int(v) for v in replies[2 * i + 1] if v)
        stats.append(
            ShardStats(
                shard=k.shard,
                queued=queued,
                retrying=retrying,
                leased=leased,
                expired_leases=expired,
                dead=dead,
                oldest_accepted_ms=None if oldest < 0 else oldest,
                stale=stale,
                drained_per_s=drained / window_s,
            )
        )
    return stats
