"""The fan-out sends at most one drain task per shard (docs/architecture.md#fan-out): real Redis, and the
messages the tick would put on the broker recorded at ``apply_async``."""

from __future__ import annotations

import time

import pytest

from buffer.buffer import Buffer
from drainer import tasks
from drainer.limits import DrainLimits
from runs.ids import new_run_id


def park_on(buffer: Buffer, shard: int) -> None:
    org = next(o for o in range(1, 10_000) if buffer.shard_for(o) == shard)
    buffer.accept(run_id=new_run_id(), env_id=org, org_id=org, snapshot='{"v": 1}', now_ms=0, idempotency=None,
                  max_per_env=10)  # fmt: skip


@pytest.fixture
def sent(monkeypatch):
    """The shard tasks the fan-out sends, as (shard, expires) — instead of broker messages."""
    calls: list[tuple[int, float]] = []
    monkeypatch.setattr(tasks.drain_shard, "apply_async", lambda args, expires: calls.append((args[0], expires)))
    return calls


def test_claim_sends_marks_each_shard_once_until_its_task_runs_or_the_mark_lapses(key_prefix, mollifier_settings):
    mollifier_settings(SHARDS=8)
    buffer = Buffer.from_settings()

    assert buffer.claim_sends([3, 1], ttl_ms=60_000) == [3, 1]  # in the order asked
    assert buffer.claim_sends([1, 2, 3], ttl_ms=60_000) == [2]  # 1 and 3 wait in the broker already
    buffer.clear_send(3)  # shard 3's task started
    assert buffer.claim_sends([1, 3], ttl_ms=60_000) == [3]
    assert buffer.claim_sends([], ttl_ms=60_000) == []

    assert buffer.claim_sends([5], ttl_ms=50) == [5]
    time.sleep(0.1)  # the task was never run (expired in the broker, or lost): the mark goes with it
    assert buffer.claim_sends([5], ttl_ms=50) == [5]
    with pytest.raises(ValueError, match="ttl_ms must be an int >= 1"):
        buffer.claim_sends([1], ttl_ms=0)


@pytest.mark.django_db  # each tick also checks the buffer epochs against Postgres (drainer.epochs)
def test_ticks_send_a_busy_shard_once_until_its_task_starts(key_prefix, mollifier_settings, sent):
    # Kicks off (the default, set here all the same): a task drops its shard's mark as it starts (with kicks on,
    # the holder's end decides it: test_kick).
    mollifier_settings(SHARDS=4, DRAINER_ENABLED=True, DRAIN_INTERVAL_S=0.2, DRAIN_KICK=False)
    buffer = Buffer.from_settings()
    park_on(buffer, 1)
    park_on(buffer, 2)

    first = tasks.fan_out()
    assert sorted(first) == [1, 2]
    assert tasks.fan_out() == [] and tasks.fan_out() == []  # a busy worker: ticks pile up no tasks
    assert sorted(shard for shard, _ in sent) == [1, 2]
    # Ten shard-task budgets long: a task waiting behind other shards' tasks keeps its place in line.
    assert {expires for _, expires in sent} == {tasks.send_expiry_s(0.2, time_budget_ms=2000)} == {20.0}

    with buffer.shard_lock(2, "drain", timeout_s=5):  # shard 2's task runs while another holds its lock
        assert tasks.drain_shard(2) == {"shard": 2, "locked": True}
    assert tasks.fan_out() == [2]  # it started, so the next tick may send shard 2 again; 1 still waits


def test_a_shard_task_outlives_both_the_tick_and_the_wait_behind_other_shards_tasks():
    assert tasks.send_expiry_s(1.0, time_budget_ms=2000) == 20.0
    assert tasks.send_expiry_s(10.0, time_budget_ms=2000) == 50.0
    assert tasks.send_expiry_s(0.2, time_budget_ms=500) == 5.0


@pytest.mark.parametrize(
    ("budget_ms", "lease_ms", "lock_ms"),
    [(2000, 30_000, 7000), (1000, 2500, 1750), (1000, 5000, 3000), (2000, 2001, 2000), (100, 600_000, 5100)],
)
def test_the_shard_lock_outlives_the_budget_and_never_the_leases_of_its_holder(budget_ms, lease_ms, lock_ms):
    """A frozen holder's shard goes to the next task before its own leases expire (docs/architecture.md#shard-lock)."""
    limits = DrainLimits(
        time_budget_ms=budget_ms, round_budget=1, round_max_bytes=1, max_orgs_per_round=1, lease_ms=lease_ms,
        max_attempts=1, ack_grace_ms=0,
    )  # fmt: skip
    assert tasks.shard_lock_ms(limits) == lock_ms
    assert budget_ms <= tasks.shard_lock_ms(limits) < lease_ms


@pytest.mark.parametrize(
    ("now_ms", "gate_ms"),
    [(45_000, 7_500), (46_999, 7_500), (47_000, 0), (59_999, 0), (60_000, 7_500)],
)
def test_only_the_ticks_at_the_start_of_a_window_ask_for_the_chart_gate(now_ms, gate_ms):
    assert tasks.chart_gate_ms(now_ms, every_s=15, interval_s=1.0) == gate_ms


def test_with_ticks_as_long_as_the_window_every_tick_asks_and_charts_off_none_does():
    assert tasks.chart_gate_ms(14_999, every_s=15, interval_s=10.0) == 7_500
    assert tasks.chart_gate_ms(0, every_s=0, interval_s=1.0) == 0
