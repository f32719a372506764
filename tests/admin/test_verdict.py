"""The dashboard's health verdict (``sweep.dashboard``): pure functions over typed shard figures."""

from __future__ import annotations

import pytest

from buffer.values import ShardStats
from sweep import dashboard
from sweep.dashboard import Flags, Health, Paused

NOW = 1_000_000_000
MIN = 60_000
ON = Flags(enabled=True, drainer_enabled=True, stale_sweep_enabled=True, shadow_mode=False)
STALE_MS = 300_000


BOUND = dashboard.DEFAULT_STUCK_AFTER_MS


def stats(
    shard=0, *, queued=0, retrying=0, leased=0, expired=0, dead=0, age_ms=None, rate=0.0, stale=0, progress_ago_ms=None
):
    """A shard that drains (``rate`` > 0) made progress a second ago unless ``progress_ago_ms`` says otherwise."""
    if progress_ago_ms is None and rate > 0:
        progress_ago_ms = 1_000
    return ShardStats(
        shard=shard, queued=queued, retrying=retrying, leased=leased, expired_leases=expired, dead=dead,
        oldest_accepted_ms=None if age_ms is None else NOW - age_ms, stale=stale, drained_per_s=rate,
        recent_per_s=rate, last_progress_ms=None if progress_ago_ms is None else NOW - progress_ago_ms,
    )  # fmt: skip


def judge(*shard_stats, circuits=None, flags=ON, paused=None):
    rows = dashboard.rows(
        shard_stats, circuits or [0] * len(shard_stats), now_ms=NOW, paused=paused or [Paused()] * len(shard_stats)
    )
    return dashboard.verdict(flags, rows, stale_threshold_ms=STALE_MS)


def test_an_empty_buffer_is_flowing():
    v = judge(stats(0), stats(1))
    assert v.health is Health.FLOWING
    assert v.reason == "flowing: the buffer is empty"
    assert v.notes == []


def test_entries_draining_fast_are_flowing():
    v = judge(stats(0, queued=30, age_ms=2_000, rate=200.0))
    assert v.health is Health.FLOWING
    assert v.reason == "flowing: 30 entries wait, draining 200.0/s"


def test_a_shard_with_old_entries_and_no_progress_is_stuck_with_every_stuck_shard_named():
    v = judge(stats(0, queued=5, age_ms=2 * MIN), stats(3, queued=100, retrying=20, age_ms=11 * MIN), stats(1))
    assert v.health is Health.STUCK
    assert v.reason == (
        "stuck: no drain progress on shards 3, 0 for 11 min (bound 22 s); shard 3 has 120 entries, oldest 11 min"
    )


def test_stuck_is_counted_from_the_last_progress_and_flips_at_the_bound():
    # Entries an hour old, the last progress just under / at the bound ago.
    assert judge(stats(0, queued=50, age_ms=60 * MIN, progress_ago_ms=BOUND - 1)).health is Health.BACKLOGGED
    v = judge(stats(0, queued=50, age_ms=60 * MIN, progress_ago_ms=BOUND))
    assert v.health is Health.STUCK
    assert v.reason.startswith("stuck: no drain progress on shard 0 for 22 s (bound 22 s)")


def test_a_shard_idle_for_an_hour_that_just_got_an_entry_is_not_stuck():
    # The last progress is an hour old, but the work became due only 5 s ago.
    assert judge(stats(0, queued=1, age_ms=5_000, progress_ago_ms=60 * MIN)).health is Health.BACKLOGGED
    assert judge(stats(0, queued=1, age_ms=BOUND, progress_ago_ms=60 * MIN)).health is Health.STUCK


def test_entries_of_paused_envs_alone_are_no_work_due():
    # Paused envs' entries count in the depth, not in the oldest age: nothing is due, nothing is stuck.
    row = dashboard.rows([stats(0, queued=40, progress_ago_ms=60 * MIN)], [0], now_ms=NOW)[0]
    assert row.stalled_ms is None and not row.stuck


def test_a_stuck_shard_shows_no_rate_and_no_eta_so_the_page_cannot_disagree():
    # It drained 5/s during the recent window, then stopped: past the bound it is stuck, and every figure says so.
    (row,) = dashboard.rows([stats(0, queued=2_000, age_ms=5 * MIN, rate=5.0, progress_ago_ms=BOUND + 1)], [0],
                            now_ms=NOW)  # fmt: skip
    assert row.stuck and row.rate == 0.0 and row.eta_s is None and row.eta_text == "never (nothing drains)"
    total = dashboard.totals([row])
    assert total.rate == 0.0 and total.eta_s is None
    v = dashboard.verdict(ON, [row], stale_threshold_ms=STALE_MS)
    assert v.health is Health.STUCK and "draining" not in v.reason


def test_the_stuck_bound_is_a_send_expiry_plus_a_time_budget():
    assert dashboard.stuck_bound_ms(20.0, 2_000) == 22_000 == dashboard.DEFAULT_STUCK_AFTER_MS
    assert dashboard.stuck_bound_ms(5.0, 500) == 5_500


def test_expired_leases_nobody_reclaims_are_stuck():
    v = judge(stats(2, leased=4, expired=4))
    assert v.health is Health.STUCK
    assert "shard 2 has 4 entries, 4 expired leases not reclaimed" in v.reason


def test_young_entries_on_an_idle_shard_are_not_stuck_yet():
    assert judge(stats(0, queued=3, age_ms=5_000)).health is Health.BACKLOGGED  # no rate: no ETA either


def test_entries_older_than_the_stale_threshold_that_still_drain_are_backlogged():
    v = judge(stats(0, queued=12_000, age_ms=6 * MIN, rate=150.0), stats(1, queued=10, age_ms=1_000, rate=100.0))
    assert v.health is Health.BACKLOGGED
    assert v.reason == "backlogged: 12,000 entries wait on 1 shard, oldest 6 min, draining 150.0/s (ETA 1 min 20 s)"


def test_a_backlog_that_needs_more_than_a_minute_at_the_current_rate_is_backlogged():
    v = judge(stats(0, queued=10_000, age_ms=10_000, rate=50.0))
    assert v.health is Health.BACKLOGGED
    assert "ETA 3 min 20 s" in v.reason


def test_open_circuits_are_a_postgres_outage_whatever_else_holds():
    circuits = [NOW + 2_000, 0, NOW + 500, NOW + 4_000, NOW + 1]
    shards = [stats(i, queued=10, age_ms=20 * MIN) for i in range(5)]
    v = judge(*shards, circuits=circuits)
    assert v.health is Health.OUTAGE
    assert (
        v.reason
        == "Postgres outage: circuit open on 4 shards (0, 2, 3, 4), retrying Postgres within 4 s; 50 entries wait"
    )


def test_a_circuit_whose_time_has_passed_is_closed():
    assert judge(stats(0), circuits=[NOW - 1]).health is Health.FLOWING


def test_the_drainer_switched_off_is_paused():
    off = Flags(enabled=True, drainer_enabled=False, stale_sweep_enabled=True, shadow_mode=False)
    v = judge(stats(0, queued=120, age_ms=11 * MIN), flags=off)
    assert v.health is Health.PAUSED
    assert v.reason == "paused: the drainer is switched off (DRAINER_ENABLED is false); 120 entries wait, oldest 11 min"
    assert judge(stats(0), flags=off).reason.endswith("the buffer is empty")


def test_operator_paused_tenants_are_paused_when_nothing_else_is_wrong():
    # Their entries count in the depth but not in the oldest age, and nothing drains them: no backlog.
    assert judge(stats(0, queued=40), stats(1), paused=[Paused(orgs=2), Paused()]).health is Health.PAUSED
    v = judge(stats(0), stats(1), paused=[Paused(orgs=2), Paused(envs=1)])
    assert v.health is Health.PAUSED
    assert v.reason == "paused: 2 orgs and 1 env paused by an operator (their entries wait); everything else flows"


def test_notes_mention_dead_letters_and_flags_that_are_off():
    flags = Flags(enabled=False, drainer_enabled=True, stale_sweep_enabled=False, shadow_mode=False)
    v = judge(stats(0, dead=5), stats(1, dead=1), flags=flags)
    assert v.health is Health.FLOWING
    assert v.notes == [
        "6 dead letters wait for an operator (stuck entries, or redrive)",
        "the gate is off (ENABLED is false): no new trigger is buffered",
        "the stale sweep is off (STALE_SWEEP_ENABLED is false): no stuck entries are recorded",
    ]


def test_shard_rows_compute_age_eta_and_circuit():
    (row,) = dashboard.rows([stats(0, queued=90, leased=10, age_ms=90_000, rate=20.0)], [NOW + 3_000], now_ms=NOW)
    assert (row.depth, row.waiting, row.oldest_age_ms, row.eta_s) == (90, 100, 90_000, 5.0)
    assert (row.oldest_text, row.eta_text, row.circuit_text) == ("1 min 30 s", "5 s", "open (3 s left)")
    (idle,) = dashboard.rows([stats(0)], [0], now_ms=NOW)
    assert idle.idle and idle.eta_text == "—" and idle.circuit_text == "closed"
    (never,) = dashboard.rows([stats(0, queued=1)], [0], now_ms=NOW)
    assert never.eta_s is None and never.eta_text == "never (nothing drains)"


@pytest.mark.parametrize(
    ("ms", "text"),
    [(450, "450 ms"), (42_000, "42 s"), (660_000, "11 min"), (90_000, "1 min 30 s"), (7_500_000, "2 h 5 min"),
     (3 * 86_400_000 + 4 * 3_600_000, "3 d 4 h")],
)  # fmt: skip
def test_durations_read_like_an_operator_would_say_them(ms, text):
    assert dashboard.duration(ms) == text


def test_the_fan_out_note_shows_only_with_work_due_and_no_recent_tick():
    rows = dashboard.rows([stats(0, queued=5, age_ms=3_000)], [0], now_ms=NOW)
    beat = "the drain fan-out has not ticked for 22 s: is celery beat running?"

    def notes(age_ms, shard_rows=rows, flags=ON):
        return dashboard.verdict(flags, shard_rows, stale_threshold_ms=STALE_MS, fan_out_tick_age_ms=age_ms).notes

    assert notes(BOUND - 1) == []
    assert notes(BOUND) == [beat]
    assert notes(None) == ["the drain fan-out has never ticked on this Redis: is celery beat running?"]
    assert notes(None, shard_rows=dashboard.rows([stats(0)], [0], now_ms=NOW)) == []  # nothing due
    off = Flags(enabled=True, drainer_enabled=False, stale_sweep_enabled=True, shadow_mode=False)
    assert notes(None, flags=off) == []  # the fan-out is not scheduled while the drainer is off
