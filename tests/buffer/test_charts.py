"""The dashboard charts' samples in Redis (``buffer.charts``, ``lua/chart_sample.lua``): a capped series per shard,
kept in time order, written on the fan-out tick that wins the sample gate. Real Redis, one key prefix per test."""

from __future__ import annotations

import time

import pytest

from buffer import charts
from buffer.buffer import Buffer
from buffer.keys import ShardKeys
from tests.buffer.invariants import assert_consistent

EVERY_S = 15
T0 = 1_800_000_000_000


def test_recording_caps_the_series_and_keeps_it_oldest_first(buffer: Buffer, redis_client):
    cap = charts.cap_for(EVERY_S)
    times = [T0 + i * EVERY_S * 1000 for i in range(cap + 7)]
    for t in times:
        assert buffer.record_chart_samples(now_ms=t, every_s=EVERY_S) == buffer.shards

    per_shard = buffer.chart_samples(every_s=EVERY_S)

    assert len(per_shard) == buffer.shards
    for samples in per_shard:
        assert [s.t_ms for s in samples] == times[-cap:]  # the oldest 7 trimmed, the order kept
    assert cap == 242  # an hour at 15 s, plus the hour's first edge and one early tick
    assert {redis_client.llen(ShardKeys(buffer.prefix, k).chart) for k in range(buffer.shards)} == {cap}  # stored


def test_a_sample_not_half_an_interval_after_the_newest_is_refused(buffer: Buffer):
    buffer.record_chart_samples(now_ms=T0, every_s=EVERY_S)

    assert buffer.record_chart_samples(now_ms=T0, every_s=EVERY_S) == 0  # a duplicate tick
    assert buffer.record_chart_samples(now_ms=T0 - 60_000, every_s=EVERY_S) == 0  # a late tick with an old clock
    assert buffer.record_chart_samples(now_ms=T0 + 7_000, every_s=EVERY_S) == 0
    assert buffer.record_chart_samples(now_ms=T0 + 7_500, every_s=EVERY_S) == buffer.shards  # a jittered tick
    assert [s.t_ms for s in buffer.chart_samples(every_s=EVERY_S)[0]] == [T0, T0 + 7_500]


def test_a_sample_holds_the_shards_depth_drained_total_and_oldest_age(buffer: Buffer, put):
    org = next(o for o in range(1, 1000) if buffer.shard_for(o) == 2)
    put(org, 7, now_ms=T0 - 90_000, count=3)
    put(org, 8, now_ms=T0 - 30_000)
    buffer.count_drained(2, 5, now_ms=T0 - 20_000)
    buffer.count_drained(2, 4, now_ms=T0 - 10_000)

    buffer.record_chart_samples(now_ms=T0, every_s=EVERY_S)

    per_shard = buffer.chart_samples(every_s=EVERY_S)
    assert per_shard[2] == [charts.ChartSample(T0, depth=4, drained_total=9, oldest_age_ms=90_000)]
    assert per_shard[0] == [charts.ChartSample(T0, depth=0, drained_total=0, oldest_age_ms=None)]
    assert_consistent(buffer)  # the new keys have the schema's shapes


def test_an_unreadable_sample_is_skipped(buffer: Buffer, redis_client):
    buffer.record_chart_samples(now_ms=T0, every_s=EVERY_S)
    redis_client.lpush(ShardKeys(buffer.prefix, 1).chart, "garbage", "1:2:x:4")

    assert buffer.chart_samples(every_s=EVERY_S)[1] == [charts.ChartSample(T0, 0, 0, None)]


def test_one_fan_out_tick_per_interval_wins_the_sample(buffer: Buffer):
    assert buffer.mark_fan_out_tick(now_ms=T0) is False  # charts off: the tick's plain SET
    assert buffer.mark_fan_out_tick(now_ms=T0, chart_every_ms=300) is True
    assert buffer.mark_fan_out_tick(now_ms=T0 + 1, chart_every_ms=300) is False  # another beat, same interval
    assert buffer.fan_out_last_tick_ms() == T0 + 1  # the tick is marked either way
    time.sleep(0.4)
    assert buffer.mark_fan_out_tick(now_ms=T0 + 2, chart_every_ms=300) is True
    with pytest.raises(ValueError, match="chart_every_ms must be an int >= 0"):
        buffer.mark_fan_out_tick(now_ms=T0, chart_every_ms=-1)


def test_the_drained_total_only_grows_and_never_expires(buffer: Buffer, redis_client):
    buffer.count_drained(3, 2, now_ms=T0)
    buffer.count_drained(3, 0, now_ms=T0 + 1)  # nothing left: nothing written
    buffer.count_drained(3, 5, now_ms=T0 + 2)

    key = ShardKeys(buffer.prefix, 3).drained_total
    assert int(redis_client.get(key)) == 7
    assert redis_client.pttl(key) == -1


def test_a_full_series_costs_under_60_bytes_a_sample(buffer: Buffer, redis_client):
    """The figure docs/operations.md#dashboard-charts quotes: a shard's full hour, by MEMORY USAGE."""
    cap = charts.cap_for(EVERY_S)
    for shard in range(buffer.shards):
        buffer.count_drained(shard, 1_234_567, now_ms=T0)
    for i in range(cap):
        buffer.record_chart_samples(now_ms=T0 + i * EVERY_S * 1000, every_s=EVERY_S)

    used = redis_client.memory_usage(ShardKeys(buffer.prefix, 0).chart, samples=0)

    print(f"chart series: {used} bytes for {cap} samples = {used / cap:.1f} B/sample")
    assert used / cap < 60
