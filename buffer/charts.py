"""The dashboard charts' samples (docs/operations.md#dashboard-charts): a small capped series per shard in Redis.

The fan-out tick that wins ``chart:due`` (``DrainSide.mark_fan_out_tick``, in the tick's own round trip) reads
every shard's stats (``buffer.stats``, one pipelined round trip) and appends one sample per shard with
``lua/chart_sample.lua`` (one more pipelined round trip): ``(t_ms, depth, drained_total, oldest_age_ms)``.
Only the ticks at a window's start ask for the gate (``drainer.tasks.chart_gate_ms``) and a tick that does not
win it costs nothing more: the buffer pays two round trips per interval, not per tick.

Each shard keeps the last ``cap_for(every_s)`` samples (an hour and a bit), newest first, in a LIST of
``<t>:<depth>:<drained>:<age>`` strings of about 35 bytes; at the default 15 s interval that is 242 samples,
about 9 KB per shard (measured with ``MEMORY USAGE`` in ``tests/buffer/test_charts.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis

from buffer.keys import ShardKeys
from buffer.scripts import Scripts
from buffer.stats import ShardStats

WINDOW_MS = 3_600_000  # the charts show the last hour


@dataclass(frozen=True, slots=True)
class ChartSample:
    """One shard at one fan-out tick: what the dashboard's charts draw."""

    t_ms: int
    depth: int  # queued + retrying
    drained_total: int  # entries that ever left the shard: a counter (falls only when Redis went back)
    oldest_age_ms: int | None  # the oldest due entry's age; None when nothing waits


def cap_for(every_s: int) -> int:
    """Samples kept per shard at one sample every ``every_s``: the hour, plus one for the hour's first edge and
    one for a tick that came early."""
    if every_s < 1:
        raise ValueError(f"every_s must be an int >= 1, got {every_s!r}")
    return -(-WINDOW_MS // (every_s * 1000)) + 2


def record(
    client: redis.Redis, scripts: Scripts, shard_keys: Sequence[ShardKeys], stats: Sequence[ShardStats], *,
    now_ms: int, every_ms: int, cap: int,
) -> int:  # fmt: skip
    """Append one sample per shard (``stats`` in the order of ``shard_keys``), one pipelined round trip. A shard
    whose newest sample is less than half an interval old refuses it (a duplicate tick). Returns how many
    were recorded."""
    pipe = client.pipeline(transaction=False)
    for k, s in zip(shard_keys, stats, strict=True):
        age = -1 if s.oldest_accepted_ms is None else max(0, now_ms - s.oldest_accepted_ms)
        scripts.chart_sample(
            keys=[k.chart, k.drained_total], args=[now_ms, max(1, every_ms // 2), cap, s.depth, age], client=pipe
        )
    return sum(int(r) for r in pipe.execute())


def read(client: redis.Redis, shard_keys: Sequence[ShardKeys], *, limit: int) -> list[list[ChartSample]]:
    """Every shard's newest ``limit`` samples, oldest first, in one pipelined round trip. A sample that does not
    parse (written by another version) is skipped rather than breaking the page."""
    pipe = client.pipeline(transaction=False)
    for k in shard_keys:
        pipe.lrange(k.chart, 0, limit - 1)
    return [[s for s in map(parse, reversed(raw)) if s is not None] for raw in pipe.execute()]


def parse(raw: str) -> ChartSample | None:
    parts = raw.split(":")
    if len(parts) != 4:
        return None
    try:
        t, depth, drained, age = (int(p) for p in parts)
    except ValueError:
        return None
    return ChartSample(t, depth, drained, None if age < 0 else age)
