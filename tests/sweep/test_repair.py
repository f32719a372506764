"""Re-driving dead letters (``sweep.repair.redrive``, ``manage.py mollifier_buffer redrive``): they go back
to their queue heads with attempts reset and are drained like any other entry — real Redis and Postgres."""

from __future__ import annotations

from io import StringIO

import pytest
from django.conf import settings
from django.core.management import call_command

from buffer.buffer import AcceptStatus, Buffer
from drainer import drain
from drainer.limits import DrainLimits
from runs.models import TaskRun
from runs.snapshot import to_snapshot
from sweep import repair
from tests.buffer.invariants import assert_consistent
from tests.factories import EnvironmentFactory, SnapshotFactory

NOW = 5_000_000


@pytest.fixture
def buffer(key_prefix, mollifier_settings) -> Buffer:
    mollifier_settings(SHARDS=2, DRAINER_ENABLED=True)
    return Buffer.from_settings()


def dead_letters(buffer: Buffer, env, n: int) -> list[str]:
    """``n`` entries of ``env``, leased once (attempts stay 0 here) and dead-lettered."""
    shard = buffer.shard_for(env.org_id)
    ids = []
    for _ in range(n):
        s = SnapshotFactory(env=env)
        result = buffer.accept(run_id=s.id, env_id=env.id, org_id=env.org_id, snapshot=to_snapshot(s), now_ms=NOW,
                               idempotency=None, max_per_env=100)  # fmt: skip
        assert result.status is AcceptStatus.ACCEPTED
        ids.append(s.id)
    buffer.lease(shard, org_id=env.org_id, env_id=env.id, n=n, now_ms=NOW, lease_ms=30_000)
    for run_id in ids:
        assert buffer.dead_letter(shard, run_id, now_ms=NOW, reason="env deleted")
    return ids


def status(buffer: Buffer, env, run_id: str) -> tuple[str, int]:
    entry = buffer.get(run_id, org_id=env.org_id)
    assert entry is not None
    return entry.status.value, entry.attempts


@pytest.mark.django_db
def test_the_command_redrives_one_envs_dead_letters_and_the_drain_writes_them(buffer):
    mine, other = EnvironmentFactory(), EnvironmentFactory()
    ids, others = dead_letters(buffer, mine, 3), dead_letters(buffer, other, 1)
    out = StringIO()

    call_command("mollifier_buffer", "redrive", "--env", str(mine.id), stdout=out)

    assert out.getvalue().strip() == "redriven 3; already handled 0"
    assert [status(buffer, mine, r) for r in ids] == [("QUEUED", 0)] * 3
    assert status(buffer, other, others[0]) == ("DEAD", 0)  # another env's letter stays for its operator
    assert buffer.depth(buffer.shard_for(mine.org_id), mine.id) == 3
    assert buffer.get(ids[0], org_id=mine.org_id).last_error == "env deleted"  # kept for the record
    assert_consistent(buffer)

    shard = buffer.shard_for(mine.org_id)
    report = drain.drain_shard(buffer, shard=shard, limits=DrainLimits.from_settings(settings.MOLLIFIER))
    assert report.created == 3
    assert set(TaskRun.objects.filter(env=mine).values_list("id", flat=True)) == set(ids)


@pytest.mark.django_db
def test_redriving_twice_changes_nothing_the_second_time(buffer):
    env = EnvironmentFactory()
    dead_letters(buffer, env, 2)

    first = repair.redrive(buffer, now_ms=NOW)
    second = repair.redrive(buffer, now_ms=NOW)

    assert (first.changed, second.changed, second.already_handled) == (2, 0, 0)


@pytest.mark.django_db
def test_a_given_run_that_is_no_longer_dead_is_reported_as_already_handled(buffer):
    env = EnvironmentFactory()
    ids = dead_letters(buffer, env, 2)
    shard = buffer.shard_for(env.org_id)
    assert buffer.redrive(shard, now_ms=NOW, limit=10, run_ids=[ids[0]]) == (1, 0)

    assert buffer.redrive(shard, now_ms=NOW, limit=10, run_ids=ids) == (1, 1)
    assert_consistent(buffer)


@pytest.mark.django_db
def test_the_limit_caps_how_many_are_redriven(buffer):
    env = EnvironmentFactory()
    dead_letters(buffer, env, 5)

    assert repair.redrive(buffer, now_ms=NOW, limit=2).changed == 2
    assert repair.redrive(buffer, now_ms=NOW).changed == 3
