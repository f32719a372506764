"""Several real ``celery beat`` processes with the beat lease on (docs/operations.md#several-beats): exactly one
sends ticks; SIGKILL of that one hands the ticks to another within the stated bound (measured and printed); a beat
SIGSTOPped past its lease and then resumed sends nothing; and under all of it no shard is drained by two tasks
at once (the shard lock), every parked run becomes exactly one row.

The beats run ``tests.drainer.worker_app``, whose ``before_task_publish`` receiver records every message a beat
sends (``Cluster.sends``): the ticks are counted per beat where they are made, not where they run.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from collections import Counter
from datetime import datetime

import pytest

from runs.models import TaskRun
from tests.drainer.processes import Producer, wait_until
from tests.drainer.test_processes import park, start_cluster  # noqa: F401  (start_cluster: a fixture)
from tests.factories import EnvironmentFactory, SnapshotFactory

LEASE_MS, RENEW_MS, INTERVAL_S = 2000, 400, 0.2
SETTINGS = {
    "BEAT_LEASE_ENABLED": True, "BEAT_LEASE_MS": LEASE_MS, "BEAT_RENEW_MS": RENEW_MS, "DRAIN_INTERVAL_S": INTERVAL_S,
    "SHARDS": 4, "ROUND_BUDGET": 20,
}  # fmt: skip
# The stated take-over bound (docs/operations.md#several-beats): the lease lapses, the standby's next try takes it.
BOUND_S = (LEASE_MS + RENEW_MS) / 1000
SLACK_S = 3.0  # process start-up of nothing, but a loaded 2-core box: a broker hop and a scheduler wake-up
FAN_OUT = "drainer.fan_out"


def ticks_by(cluster, *, since: float = 0.0) -> Counter[str]:
    return Counter(e["name"] for e in cluster.sends(FAN_OUT) if e["at"] >= since)


def active_beat(cluster, beats) -> tuple[object, object]:
    """(active, standby) once exactly one beat has ticked."""
    wait_until(lambda: ticks_by(cluster), timeout=20, what="a first tick")
    [name] = ticks_by(cluster)
    active = next(b for b in beats if b.name == name)
    return active, next(b for b in beats if b is not active)


def lease_taken_at(process) -> float | None:
    """When (epoch seconds) the beat's log says it took the lease: ``beat lease taken`` (a JSON line)."""
    for line in process.log.read_text(errors="replace").splitlines():
        if "beat lease taken" in line and line.startswith("{"):
            return datetime.fromisoformat(json.loads(line)["time"]).timestamp()
    return None


def assert_no_shard_drained_twice_at_once(cluster) -> int:
    """Per shard, the lock holders' [started, ended] never overlap; returns how many held the lock."""
    held = [r for r in cluster.drain_reports() if r["retval"] and not r["retval"].get("locked")]
    for shard in {r["shard"] for r in held}:
        spans = sorted((r["started"], r["ended"]) for r in held if r["shard"] == shard)
        for (_, ended), (started, _) in itertools.pairwise(spans):
            assert started >= ended, f"shard {shard} drained by two tasks at once: {spans}"
    return len(held)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_one_of_two_beats_ticks_and_the_other_takes_over_within_the_bound_when_it_is_killed(
    start_cluster,  # noqa: F811
):
    cluster, buffer = start_cluster(**SETTINGS)
    envs = [EnvironmentFactory() for _ in range(8)]
    made = []

    def accept(n: int) -> list[str]:
        snaps = [SnapshotFactory(env=envs[len(made) % len(envs)]) for _ in range(n)]
        made.extend(snaps)
        return park(buffer, snaps)

    workers = [cluster.start_worker("w1"), cluster.start_worker("w2")]
    beats = [cluster.start_beat("beat-a"), cluster.start_beat("beat-b")]
    cluster.wait_ready(*workers, *beats)
    producer = Producer(accept, per_second=200)
    producer.start()
    try:
        active, standby = active_beat(cluster, beats)
        time.sleep(3.0)
        both = ticks_by(cluster)
        print(f"ticks per beat over ~3 s: {dict(both)}")
        assert both[active.name] >= 5 and both[standby.name] == 0

        killed_at = time.time()
        active.kill()
        first = wait_until(
            lambda: [e["at"] for e in cluster.sends(FAN_OUT) if e["name"] == standby.name],
            timeout=BOUND_S + SLACK_S + 10, what="the standby's first tick",
        )  # fmt: skip
        takeover_s = min(first) - killed_at
        taken_s = lease_taken_at(standby) - killed_at
        print(
            f"take-over after SIGKILL of the active beat: lease taken after {taken_s:.2f} s, first tick sent after"
            f" {takeover_s:.2f} s (bound {BOUND_S:.1f} s)"
        )
        assert takeover_s <= BOUND_S + SLACK_S
        time.sleep(2.0)  # the new beat drains for a while
    finally:
        ids = producer.stop()

    epochs = {e["epoch"] for e in cluster.sends(FAN_OUT) if e["name"] == standby.name}
    assert epochs == {2}, epochs  # the standby's taking is the second one
    wait_until(lambda: TaskRun.objects.filter(id__in=ids).count() == len(ids), timeout=60, what="every run a row")
    assert TaskRun.objects.filter(id__in=ids).count() == len(ids) == len(set(ids))
    held = assert_no_shard_drained_twice_at_once(cluster)
    print(f"parked {len(ids)} runs, all rows; {held} shard tasks held a lock, none overlapping on a shard")


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_beat_paused_past_its_lease_sends_nothing_when_it_resumes(start_cluster):  # noqa: F811
    cluster, _buffer = start_cluster(**SETTINGS)
    worker = cluster.start_worker("w1")
    beats = [cluster.start_beat("beat-a"), cluster.start_beat("beat-b")]
    cluster.wait_ready(worker, *beats)
    paused, standby = active_beat(cluster, beats)

    os.kill(paused.pid, signal.SIGSTOP)
    try:
        stopped_at = time.time()
        wait_until(lambda: ticks_by(cluster, since=stopped_at)[standby.name], timeout=BOUND_S + SLACK_S + 10,
                   what="the standby to take over")  # fmt: skip
    finally:
        os.kill(paused.pid, signal.SIGCONT)
    resumed_at = time.time()
    time.sleep(3.0)  # many of its own tick intervals and renew intervals

    after = ticks_by(cluster, since=resumed_at)
    print(f"ticks per beat in the 3 s after the paused beat resumed: {dict(after)}")
    assert after[paused.name] == 0
    assert after[standby.name] >= 5
    ran = [e for e in cluster.events("task") if e["task"] == FAN_OUT and e["started"] >= resumed_at]
    assert any(e["epoch"] == 2 and e["retval"] is not None for e in ran)  # the standby's ticks run
    # A tick the paused beat had in hand when it froze is dropped by the task's fence (returns None, no sends).
    assert all(e["retval"] is None for e in ran if e["epoch"] != 2), ran
    assert paused.popen.poll() is None  # it lives on as a standby
