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
RECENT_WINDOW_MS = BUCKET_MS  # the recent rate (ETA, dashboard): the last full bucket plus the current one, 10–20 s
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
    recent_per_s: float = 0.0  # … over the recent window (10–20 s): what the ETAs and the dashboard use
    last_progress_ms: int | None = None  # the shard's last drain round that acked or dead-lettered ≥ 1 entry
    stale_env_max: int = 0  # the largest env count in the sweep's hash: at the per-env cap, ``stale`` is a floor

    @property
    def depth(self) -> int:
        """Entries waiting to be leased (queued or retrying)."""
        return self.queued + self.retrying

    def stalled_ms(self, now_ms: int) -> int | None:
        """How long the shard has had work due without drain progress; ``None`` when no work is due.

        Work is due when an unpaused env's queue head or a due retry waits (``oldest_accepted_ms``) or a lease
        expired. Counted from the later of the last progress and the oldest due entry's arrival, so a shard
        idle for an hour that just got an entry has stalled for that entry's age, not for an hour. What the
        dashboard's "stuck" and the last-progress gauge read (docs/operations.md#liveness)."""
        if self.oldest_accepted_ms is None and self.expired_leases == 0:
            return None
        since = max(self.last_progress_ms or 0, self.oldest_accepted_ms or 0)
        return max(0, now_ms - since)


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
        pipe.get(k.drain_progress)
    replies = pipe.execute()
    recent_first = bucket_of(now_ms) - RECENT_WINDOW_MS
    recent_s = (now_ms - recent_first) / 1000
    stats = []
    for i, k in enumerate(shard_keys):
        queued, retrying, leased, expired, dead, oldest, stale, stale_max = (int(v) for v in replies[3 * i])
        counts = [(bucket, int(v)) for bucket, v in zip(buckets, replies[3 * i + 1], strict=True) if v]
        drained = sum(n for _, n in counts)
        recent = sum(n for bucket, n in counts if bucket >= recent_first)
        progress = replies[3 * i + 2]
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
                recent_per_s=recent / recent_s,
                last_progress_ms=None if progress is None else int(progress),
                stale_env_max=stale_max,
            )
        )
    return stats
