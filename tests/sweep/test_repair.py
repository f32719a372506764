"""Re-driving dead letters (``sweep.repair.redrive``, ``manage.py mollifier_buffer redrive``): they go back
to their queue heads with attempts reset and are drained like any other entry — real Redis and Postgres."""

from __future__ import annotations

from io import StringIO

import pytest
from django.conf import settings
from django.core.management import call_command

from buffer.buffer import Buffer
from buffer.values import AcceptStatus
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

    assert out.getvalue().strip() == f"redrive every dead letter of env {mine.id}: 3 re-driven, 0 already handled"
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


# ---------------------------------------------------------------------------- requeue, materialise, fail, cancel


def accepted(buffer: Buffer, env, n: int = 1, *, now_ms: int = NOW) -> list[str]:
    ids = []
    for _ in range(n):
        s = SnapshotFactory(env=env)
        assert buffer.accept(run_id=s.id, env_id=env.id, org_id=env.org_id, snapshot=to_snapshot(s), now_ms=now_ms,
                             idempotency=None, max_per_env=100).status is AcceptStatus.ACCEPTED  # fmt: skip
        ids.append(s.id)
    return ids


class T:
    """A repair target as the admin hands it over (a StuckEntry row has the same three fields)."""

    def __init__(self, env, run_id: str) -> None:
        self.run_id, self.org_id, self.env_id = run_id, env.org_id, env.id


@pytest.fixture
def states(buffer):
    """One env with an entry in every state: queued, retrying, dead, expired lease, live lease, drained."""
    env = EnvironmentFactory()
    shard = buffer.shard_for(env.org_id)
    retrying, dead, expired, live, drained = accepted(buffer, env, 5)
    for run_id in (retrying, dead, expired, live, drained):  # FIFO: each lease takes the next of these
        buffer.lease(
            shard, org_id=env.org_id, env_id=env.id, n=1, now_ms=NOW, lease_ms=10 if run_id == expired else 60_000
        )
    buffer.requeue(shard, retrying, now_ms=NOW, delay_ms=3_600_000, error="deadlock")
    buffer.dead_letter(shard, dead, now_ms=NOW, reason="env deleted")
    buffer.ack(shard, [drained], now_ms=NOW, grace_ms=30_000)
    (queued,) = accepted(buffer, env)
    return env, {"queued": queued, "retrying": retrying, "dead": dead, "expired": expired, "live": live,
                 "drained": drained}  # fmt: skip


def limits() -> DrainLimits:
    return DrainLimits.from_settings(settings.MOLLIFIER)


@pytest.mark.django_db(transaction=True)
def test_requeue_now_moves_retrying_dead_and_expired_entries_and_leaves_the_rest(buffer, states):
    env, ids = states
    later = NOW + 1_000

    done = repair.requeue_now(buffer, [T(env, r) for r in ids.values()], now_ms=later)

    assert (done.changed, done.already_handled) == (3, 3)  # queued, live and drained were not for it
    assert {k: status(buffer, env, ids[k])[0] for k in ("retrying", "dead", "expired")} == dict.fromkeys(
        ("retrying", "dead", "expired"), "QUEUED"
    )
    assert status(buffer, env, ids["dead"])[1] == 0 and status(buffer, env, ids["expired"])[1] == 1
    assert status(buffer, env, ids["live"])[0] == "LEASED"
    assert buffer.depth(buffer.shard_for(env.org_id), env.id) == 4
    assert_consistent(buffer)


@pytest.mark.django_db(transaction=True)
def test_materialise_now_writes_every_entry_no_drainer_holds(buffer, states):
    env, ids = states

    done = repair.materialise_now(buffer, [T(env, r) for r in ids.values()], now_ms=NOW + 1_000, limits=limits())

    assert (done.changed, done.already_handled) == (4, 2)  # the live lease and the drained one: someone has them
    written = set(TaskRun.objects.filter(env=env).values_list("id", flat=True))
    assert written == {ids[k] for k in ("queued", "retrying", "dead", "expired")}
    assert status(buffer, env, ids["live"])[0] == "LEASED"
    assert_consistent(buffer)


@pytest.mark.django_db(transaction=True)
def test_fail_writes_system_failure_rows_that_say_an_operator_did_it(buffer, states):
    env, ids = states

    done = repair.fail(buffer, [T(env, ids["dead"]), T(env, ids["drained"])], now_ms=NOW + 1_000, limits=limits())

    assert (done.changed, done.already_handled) == (1, 1)
    row = TaskRun.objects.get(id=ids["dead"])
    assert row.status == "SYSTEM_FAILURE" and "failed by an operator" in row.error["raw"]


@pytest.mark.django_db(transaction=True)
def test_cancel_writes_canceled_rows_and_flags_what_a_live_drainer_holds(buffer, states):
    env, ids = states
    shard = buffer.shard_for(env.org_id)

    done = repair.cancel(buffer, [T(env, ids[k]) for k in ("queued", "dead", "live", "drained")], now_ms=NOW + 1_000,
                         limits=limits())  # fmt: skip

    assert (done.changed, done.already_handled) == (3, 1)
    assert {r.id: r.status for r in TaskRun.objects.filter(env=env)} == {
        ids["queued"]: "CANCELED",
        ids["dead"]: "CANCELED",
    }
    live = buffer.get(ids["live"], org_id=env.org_id)
    assert live is not None and live.status == "LEASED" and live.cancelled
    # The drainer holding it writes its row and acks: the flag makes it CANCELED (cancel wins).
    drain.materialise(buffer, shard=shard, entries=[live], limits=limits(), now_ms=NOW + 2_000)
    assert TaskRun.objects.get(id=ids["live"]).status == "CANCELED"


@pytest.mark.django_db(transaction=True)
def test_fail_of_many_deleted_envs_dead_letters_counts_them_all_and_keeps_a_few_reasons(buffer):
    """Twelve dead letters of twelve envs deleted since: none can get a row, each is counted as dead-lettered
    (not failed), and the report keeps a bounded list of the distinct reasons."""
    envs = [EnvironmentFactory() for _ in range(12)]
    targets = [T(env, dead_letters(buffer, env, 1)[0]) for env in envs]
    for env in envs:
        env.delete()

    done = repair.fail(buffer, targets, now_ms=NOW + 1_000, limits=limits())

    assert (done.changed, done.dead, done.already_handled) == (0, 12, 0)
    assert len(done.dead_reasons) == 10  # drainer.report.MAX_DEAD_REASONS: distinct, capped
    assert all(r.startswith("failed by an operator; environment ") for r in done.dead_reasons)
    assert repair.describe(done).endswith("(and other reasons: see the StuckEntry rows), 0 already handled")
    assert {status(buffer, env, t.run_id)[0] for env, t in zip(envs, targets, strict=True)} == {"DEAD"}
    assert not TaskRun.objects.filter(id__in=[t.run_id for t in targets]).exists()
