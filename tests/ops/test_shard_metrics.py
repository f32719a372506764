"""Per-shard truth in /metrics (docs/operations.md#metrics): each shard's drain rate and ETA, and the worst
shard's ETA as one unlabelled gauge, computed from real Redis like every other gauge."""

from __future__ import annotations

import math

import pytest

from tests.sweep.test_metrics import NOW, accept, org_in, scrape, value


@pytest.fixture
def four_shards(key_prefix, mollifier_settings):
    from buffer.buffer import Buffer

    mollifier_settings(SHARDS=4)
    return Buffer.from_settings()


def test_each_shard_reports_its_own_rate_and_eta_and_the_worst_is_their_max(four_shards):
    b = four_shards
    fast, slow, stuck = org_in(b, 0), org_in(b, 1), org_in(b, 2)  # shard 3 stays empty
    for i in range(6):
        accept(b, fast, 10, now_ms=NOW - 1_000, run_id=f"run_fast_{i}")
    for i in range(12):
        accept(b, slow, 20, now_ms=NOW - 1_000, run_id=f"run_slow_{i}")
    accept(b, stuck, 30, now_ms=NOW - 1_000, run_id="run_stuck")
    # In the last full bucket: counted by the minute's rate (over 60 s) and by the ETAs' recent one (over 10 s).
    b._client.set(b.keys(0).drained(NOW - 10_000), 60)  # shard 0: 1 entry/s a minute, 6/s recently
    b._client.set(b.keys(1).drained(NOW - 10_000), 6)  # shard 1: 0.1 entry/s, 0.6/s recently
    b._client.set(b.keys(3).drained(NOW - 10_000), 30)  # shard 3: drained everything it had

    samples = scrape(b)

    rates = {s: value(samples, "mollifier_shard_drain_rate_per_second", shard=str(s)) for s in range(4)}
    etas = {s: value(samples, "mollifier_shard_drain_eta_seconds", shard=str(s)) for s in range(4)}
    assert rates == pytest.approx({0: 1.0, 1: 0.1, 2: 0.0, 3: 0.5})
    assert etas[0] == pytest.approx(6 / 6) and etas[1] == pytest.approx(12 / 0.6) and etas[3] == 0
    assert math.isinf(etas[2])  # a backlog that does not drain
    assert math.isinf(value(samples, "mollifier_drain_eta_seconds_max"))
    # Overall: the whole backlog over the whole rate, finite although one shard does not drain.
    assert value(samples, "mollifier_drain_eta_seconds") == pytest.approx(19 / 9.6)
    assert value(samples, "mollifier_drain_rate_per_second") == pytest.approx(sum(rates.values()))


def test_worst_shard_eta_is_finite_and_above_overall_when_every_shard_drains(four_shards):
    b = four_shards
    for shard, backlog, drained in ((0, 6, 60), (1, 12, 6)):
        org = org_in(b, shard)
        for i in range(backlog):
            accept(b, org, 10 + shard, now_ms=NOW - 1_000, run_id=f"run_{shard}_{i}")
        b._client.set(b.keys(shard).drained(NOW - 10_000), drained)  # the recent window: 10 s

    samples = scrape(b)

    assert value(samples, "mollifier_drain_eta_seconds_max") == pytest.approx(12 / 0.6)
    assert value(samples, "mollifier_drain_eta_seconds") == pytest.approx(18 / 6.6)


def test_the_etas_read_the_recent_window_so_a_drain_that_stopped_30_s_ago_has_none(four_shards):
    # Issue 18: with beat killed the ETA kept saying 10.8 s from a minute-long average.
    b = four_shards
    org = org_in(b, 0)
    for i in range(5):
        accept(b, org, 10, now_ms=NOW - 1_000, run_id=f"run_old_{i}")
    b._client.set(b.keys(0).drained(NOW - 30_000), 600)  # drained fast, 30 s ago, nothing since

    samples = scrape(b)

    assert value(samples, "mollifier_drain_rate_per_second") == pytest.approx(10.0)  # the minute still shows it
    assert math.isinf(value(samples, "mollifier_drain_eta_seconds"))
    assert math.isinf(value(samples, "mollifier_shard_drain_eta_seconds", shard="0"))


def test_empty_buffer_reports_zero_for_every_shard(four_shards):
    samples = scrape(four_shards)

    assert value(samples, "mollifier_drain_eta_seconds_max") == 0
    assert {labels for labels in samples["mollifier_shard_drain_eta_seconds"]} == {
        (("shard", str(s)),) for s in range(4)
    }
    assert set(samples["mollifier_shard_drain_eta_seconds"].values()) == {0}


def test_per_shard_series_are_one_per_shard_never_per_tenant(four_shards):
    b = four_shards
    for org in range(1, 40):  # many tenants, still four series
        accept(b, org, 1000 + org, now_ms=NOW, run_id=f"run_t{org}")

    samples = scrape(b)

    for name in ("mollifier_shard_drain_rate_per_second", "mollifier_shard_drain_eta_seconds"):
        assert len(samples[name]) == 4
    assert "mollifier_drain_eta_seconds_max" in samples and list(samples["mollifier_drain_eta_seconds_max"]) == [()]
