"""The stale sweep's cycle (docs/architecture.md#stale-sweep): cursor, frozen org list, counts, visited set, wrap, failures, flag."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from django.conf import settings

from buffer.buffer import Buffer
from buffer.keys import ShardKeys
from sweep import sweep
from sweep import tasks as sweep_tasks
from sweep.models import StuckEntry
from tests.live import database_url_of_test_db
from tests.sweep.conftest import THRESHOLD_MS, counts

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
OLD = 1_000  # accepted_ms of entries that are stale at NOW
NOW = OLD + THRESHOLD_MS + 1


def stale_gauge(buffer, now_ms: int = NOW) -> int:
    return sum(s.stale for s in buffer.shard_stats(now_ms=now_ms))


def state(buffer) -> dict[str, bytes | None]:
    """The raw bytes of every sweep key (DUMP), to prove a pass changed nothing."""
    return {key: buffer._client.dump(key) for key in buffer.keys(0).sweep_state}


def test_sweep_keys_carry_the_shard_hash_tag():
    k = ShardKeys("mollifier", 5)
    names = [*k.sweep_state, k.sweep_lock, k.drained(10_000)]
    assert all(name.startswith("mollifier:{m5}:") for name in names)
    assert len(set(names)) == len(names)


def test_cursor_advances_by_the_per_pass_cap_and_wraps(buffer, park, sweep_pass):
    for org in range(1, 6):
        park(org, 100 + org, now_ms=OLD)

    passes = [sweep_pass(NOW, max_orgs=2) for _ in range(4)]

    assert [p.orgs for p in passes] == [[1, 2], [3, 4], [5], [1, 2]]
    assert [p.wrapped for p in passes] == [False, False, True, False]
    assert [p.new_cycle for p in passes] == [True, False, False, True]
    assert buffer._client.get(buffer.keys(0).sweep_cursor) == "2"


def test_stale_gauge_accumulates_across_passes(buffer, park, sweep_pass):
    for org in range(1, 6):
        park(org, 100 + org, now_ms=OLD, count=org)  # org n has n stale entries

    totals = []
    for _ in range(3):
        sweep_pass(NOW, max_orgs=2)
        totals.append(stale_gauge(buffer))

    assert totals == [1 + 2, 1 + 2 + 3 + 4, 15]
    assert counts(buffer) == {101: 1, 102: 2, 103: 3, 104: 4, 105: 5}


def test_only_entries_older_than_the_threshold_count_and_the_scan_is_capped(buffer, park, sweep_pass):
    park(1, 11, now_ms=OLD, count=5)
    park(1, 11, now_ms=NOW - 5, count=2)  # fresh, behind the stale ones
    park(1, 12, now_ms=NOW - THRESHOLD_MS, count=1)  # exactly at the threshold: not older than it

    report = sweep_pass(NOW, max_entries=3)

    assert report.counts == {11: 3, 12: 0}  # 3 scanned of env 11; env 12's entry is not stale
    assert counts(buffer) == {11: 3}


def test_env_is_cleared_when_revisited_without_stale_entries(buffer, park, sweep_pass):
    stale = park(1, 11, now_ms=OLD, count=2)
    park(1, 11, now_ms=NOW, count=1)
    sweep_pass(NOW)
    assert counts(buffer) == {11: 2}

    buffer.lease(0, org_id=1, env_id=11, n=len(stale), now_ms=NOW, lease_ms=60_000)  # the stale two drain
    report = sweep_pass(NOW + 1)

    assert report.counts == {11: 0}
    assert counts(buffer) == {}  # a zero deletes the field
    assert stale_gauge(buffer) == 0


def test_fully_drained_env_leaves_the_counts_at_the_wrap(buffer, park, sweep_pass):
    park(1, 11, now_ms=OLD, count=2)
    park(2, 21, now_ms=OLD)
    park(3, 31, now_ms=OLD)
    for _ in range(2):
        sweep_pass(NOW, max_orgs=2)  # a full cycle: orgs 1, 2 then 3
    assert counts(buffer) == {11: 2, 21: 1, 31: 1}

    buffer.lease(0, org_id=1, env_id=11, n=10, now_ms=NOW, lease_ms=60_000)  # org 1 leaves the shard's orgs
    first = sweep_pass(NOW, max_orgs=2)
    assert first.orgs == [2, 3] and first.wrapped
    assert first.evicted == [11]
    assert counts(buffer) == {21: 1, 31: 1}
    assert stale_gauge(buffer) == 2


def test_env_drained_mid_cycle_keeps_its_count_until_the_wrap(buffer, park, sweep_pass):
    for org in (1, 2, 3):
        park(org, 10 * org + 1, now_ms=OLD)
    sweep_pass(NOW, max_orgs=3)  # cycle 1
    mid = sweep_pass(NOW, max_orgs=2)  # cycle 2 freezes [1, 2, 3] and visits 1, 2
    assert (mid.orgs, mid.wrapped) == ([1, 2], False)

    buffer.lease(0, org_id=3, env_id=31, n=1, now_ms=NOW, lease_ms=60_000)  # env 31 drains
    assert counts(buffer) == {11: 1, 21: 1, 31: 1}  # not visited yet this cycle: still counted

    end = sweep_pass(NOW, max_orgs=2)
    assert (end.orgs, end.counts, end.wrapped, end.evicted) == ([3], {}, True, [31])
    assert counts(buffer) == {11: 1, 21: 1}


@pytest.mark.django_db(transaction=True)  # the subprocess commits StuckEntry rows: flushed afterwards
def test_cycle_state_survives_a_new_process(buffer, park, sweep_pass, key_prefix):
    for org in range(1, 6):
        park(org, 100 + org, now_ms=OLD)
    code = (
        "import django; django.setup()\n"
        "from buffer.buffer import Buffer\nfrom sweep import sweep\n"
        f"r = sweep.sweep_shard(Buffer.from_settings(), shard=0, now_ms={NOW}, "
        f"limits=sweep.SweepLimits(older_than_ms={THRESHOLD_MS}, max_orgs=2, max_entries=1000))\n"
        "print(r.orgs)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOLLIFIER_")}
    env.update(
        DJANGO_SETTINGS_MODULE="mollifier_project.settings", DATABASE_URL=database_url_of_test_db(),
        REDIS_URL=settings.REDIS_URL, MOLLIFIER_KEY_PREFIX=key_prefix, MOLLIFIER_SHARDS="1", LOG_LEVEL="ERROR",
    )  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[1, 2]"

    assert sweep_pass(NOW, max_orgs=2).orgs == [3, 4]
    assert counts(buffer) == {101: 1, 102: 1, 103: 1, 104: 1}


def test_org_joining_mid_cycle_is_visited_next_cycle(buffer, park, sweep_pass):
    for org in (1, 2, 3):
        park(org, 10 * org + 1, now_ms=OLD)
    assert sweep_pass(NOW, max_orgs=2).orgs == [1, 2]

    park(0, 1, now_ms=OLD)  # sorts first, but the cycle's list is frozen
    rest = sweep_pass(NOW, max_orgs=2)
    assert (rest.orgs, rest.wrapped) == ([3], True)
    assert 1 not in counts(buffer)

    assert sweep_pass(NOW, max_orgs=2).orgs == [0, 1]
    assert counts(buffer)[1] == 1


def test_empty_buffer_advances_cleanly(buffer, sweep_pass):
    reports = [sweep_pass(NOW, max_orgs=2) for _ in range(3)]

    assert all(r.orgs == [] and r.wrapped and r.new_cycle for r in reports)
    assert all(value is None for value in state(buffer).values())
    assert stale_gauge(buffer) == 0


def test_empty_buffer_wrap_clears_counts_left_from_a_drained_cycle(buffer, park, sweep_pass):
    park(1, 11, now_ms=OLD)
    sweep_pass(NOW)
    buffer.lease(0, org_id=1, env_id=11, n=1, now_ms=NOW, lease_ms=60_000)

    sweep_pass(NOW)

    assert counts(buffer) == {}


def test_failed_read_raises_and_changes_nothing(buffer, park, sweep_pass):
    for org in (1, 2, 3):
        park(org, 10 * org + 1, now_ms=OLD)
    sweep_pass(NOW, max_orgs=1)  # mid-cycle: cursor 1, counts {11: 1}, visited {11}
    before = state(buffer)
    assert all(value is not None for value in before.values())
    queue = buffer.keys(0).queue(21)
    buffer._client.delete(queue)
    buffer._client.set(queue, "not a list")  # the next org's queue cannot be read

    rows_before = list(StuckEntry.objects.values_list("run_id", "last_seen_at"))

    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        sweep_pass(NOW + 1, max_orgs=1)

    assert state(buffer) == before
    assert list(StuckEntry.objects.values_list("run_id", "last_seen_at")) == rows_before


def test_disabled_sweep_clears_its_state_and_the_gauge_reads_zero(buffer, park, sweep_pass, mollifier_settings):
    for org in (1, 2, 3):
        park(org, 10 * org + 1, now_ms=OLD)
    sweep_pass(NOW, max_orgs=2)
    assert stale_gauge(buffer) == 2

    mollifier_settings(STALE_SWEEP_ENABLED=False)
    assert sweep_tasks.sweep_shard(0) == {"shard": 0, "cleared": True}

    assert all(value is None for value in state(buffer).values())
    assert stale_gauge(buffer) == 0
    assert counts(buffer) == {}


def test_disabled_fan_out_clears_every_shard_and_sends_nothing(buffer, key_prefix, mollifier_settings):
    mollifier_settings(SHARDS=3, STALE_SWEEP_ENABLED=False)
    wide = type(buffer).from_settings()
    for shard in range(3):
        wide._client.hset(wide.keys(shard).sweep_counts, "7", 1)

    assert sweep_tasks.fan_out() == []
    assert [wide._client.exists(wide.keys(shard).sweep_counts) for shard in range(3)] == [0, 0, 0]


@pytest.mark.django_db(transaction=True)  # the task closes old connections, as it must in a worker
def test_fan_out_sweeps_every_shard_once(key_prefix, mollifier_settings, celery_eager):
    mollifier_settings(SHARDS=2, STALE_SWEEP_ENABLED=True, STALE_THRESHOLD_S=10)
    wide = Buffer.from_settings()
    orgs = {wide.shard_for(org): org for org in range(1, 20)}  # one org per shard, env id = org id
    for org in orgs.values():  # accepted at 1 s after the epoch: stale at any real clock
        wide.accept(run_id=f"run_{org:025d}", env_id=org, org_id=org, snapshot="{}", now_ms=1_000,
                    idempotency=None, max_per_env=10)  # fmt: skip

    assert sweep_tasks.fan_out() == [0, 1]
    assert [counts(wide, shard) for shard in (0, 1)] == [{orgs[0]: 1}, {orgs[1]: 1}]


@pytest.mark.django_db(transaction=True)  # the task closes old connections, as it must in a worker
def test_a_held_lock_means_another_pass_is_running(buffer):
    with buffer.shard_lock(0, "sweep", timeout_s=10) as held:
        assert held
        assert sweep_tasks.sweep_shard(0) == {"shard": 0, "locked": True}
    assert "locked" not in sweep_tasks.sweep_shard(0)


def test_bad_caps_are_refused_with_their_names(buffer):
    with pytest.raises(ValueError, match="max_orgs"):
        sweep.sweep_shard(
            buffer, shard=0, now_ms=NOW, limits=sweep.SweepLimits(older_than_ms=1, max_orgs=0, max_entries=1)
        )


@pytest.mark.parametrize(("flag", "scheduled"), [("1", True), ("0", False)])
def test_beat_schedules_the_sweep_only_when_enabled(flag, scheduled):
    code = "from django.conf import settings; print('sweep-fan-out' in settings.CELERY_BEAT_SCHEDULE)"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "mollifier_project.settings", "MOLLIFIER_STALE_SWEEP_ENABLED": flag}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == str(scheduled), done.stderr
