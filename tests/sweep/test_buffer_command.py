"""``manage.py mollifier_buffer``: each subcommand calls its service and prints what it did; bad arguments
exit non-zero with a message (CommandError) — against real Redis and Postgres."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from buffer.buffer import Buffer
from runs.models import TaskRun
from runs.snapshot import to_snapshot
from sweep import sweep
from sweep.models import StuckEntry
from tests.factories import EnvironmentFactory, SnapshotFactory

OLD = 1_000


@pytest.fixture
def buffer(key_prefix, mollifier_settings) -> Buffer:
    mollifier_settings(SHARDS=2, DRAINER_ENABLED=True)
    return Buffer.from_settings()


def run(*args: str) -> str:
    out = StringIO()
    call_command("mollifier_buffer", *args, stdout=out)
    return out.getvalue()


def stuck_env(buffer: Buffer, n: int = 2):
    """An env with ``n`` stale entries, swept, so StuckEntry rows exist."""
    env = EnvironmentFactory()
    for _ in range(n):
        s = SnapshotFactory(env=env)
        buffer.accept(run_id=s.id, env_id=env.id, org_id=env.org_id, snapshot=to_snapshot(s), now_ms=OLD,
                      idempotency=None, max_per_env=100)  # fmt: skip
    sweep.sweep_shard(buffer, shard=buffer.shard_for(env.org_id), now_ms=OLD + 3_600_000,
                      limits=sweep.SweepLimits(1_000, 100, 100))  # fmt: skip
    return env


@pytest.mark.django_db
def test_stats_prints_a_row_per_shard(buffer):
    env = stuck_env(buffer)

    lines = run("stats").splitlines()

    assert lines[0].split() == ["shard", "queued", "leased", "retrying", "dead", "stale", "oldest", "rate", "eta",
                                "circuit"]  # fmt: skip
    rows = {int(line.split()[0]): line.split() for line in lines[1:]}
    assert set(rows) == {0, 1}
    assert rows[buffer.shard_for(env.org_id)][1] == "2"


@pytest.mark.django_db
def test_stuck_lists_open_rows_filtered_by_env(buffer):
    env, other = stuck_env(buffer), stuck_env(buffer, 1)

    out = run("stuck", "--env", str(env.id))

    listed = [line.split()[0] for line in out.splitlines()[1:]]
    assert sorted(listed) == sorted(StuckEntry.objects.filter(env_id=env.id).values_list("run_id", flat=True))
    assert all(r not in out for r in StuckEntry.objects.filter(env_id=other.id).values_list("run_id", flat=True))


@pytest.mark.django_db(transaction=True)
def test_fail_writes_failure_rows_for_an_envs_stuck_entries(buffer):
    env = stuck_env(buffer)

    assert run("fail", "--env", str(env.id)).strip() == "fail: 2 failed, 0 already handled"
    assert set(TaskRun.objects.filter(env=env).values_list("status", flat=True)) == {"SYSTEM_FAILURE"}
    # The repair resolved their StuckEntry rows at once: a second run finds nothing open to fail.
    assert not StuckEntry.objects.filter(env_id=env.id, resolved_at__isnull=True).exists()
    assert run("fail", "--env", str(env.id)).strip() == "fail: 0 failed, 0 already handled"


@pytest.mark.django_db
def test_requeue_of_a_queued_entry_is_already_handled(buffer):
    env = stuck_env(buffer, 1)
    (row,) = StuckEntry.objects.filter(env_id=env.id)

    assert run("requeue", "--run", row.run_id).strip() == "requeue: 0 requeued, 1 already handled"


@pytest.mark.django_db
def test_pause_resume_close_and_open_an_env(buffer):
    env = EnvironmentFactory()
    shard = buffer.shard_for(env.org_id)

    assert run("pause", "--env", str(env.id)).strip() == f"env {env.id} paused"
    assert run("pause", "--env", str(env.id)).strip() == f"env {env.id} was already paused"
    assert buffer.switches(shard).paused(env.org_id, env.id)
    assert run("resume", "--org", str(env.org_id)).strip() == f"org {env.org_id} was already resumed"
    assert run("resume", "--env", str(env.id)).strip() == f"env {env.id} resumed"
    assert run("close", "--env", str(env.id)).strip() == f"env {env.id} intake closed"
    assert buffer.switches(shard).closed_envs == {env.id}
    assert run("open", "--env", str(env.id)).strip() == f"env {env.id} intake open"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [(["pause", "--env", "987654321"], "no such environment"), (["requeue"], "--env ID or --run"),
     (["fail", "--run", "run_nope"], "no open stuck entry"), (["redrive"], "one of the arguments"),
     (["redrive", "--run", "run_x", "--limit", "2"], "not allowed with|--limit goes with")],
)  # fmt: skip
def test_bad_arguments_exit_non_zero_with_a_message(buffer, args, message):
    with pytest.raises(CommandError, match=message):
        run(*args)


@pytest.mark.django_db(transaction=True)
def test_fail_on_a_mix_prints_each_outcome_and_never_a_change_it_did_not_make(buffer):
    """A dead letter whose env is deleted (no row can be written), one already acked, one that can be failed."""
    gone, live = EnvironmentFactory(), EnvironmentFactory()
    ids = {}
    for name, env in (("orphan", gone), ("acked", live), ("fine", live)):
        s = SnapshotFactory(env=env)
        buffer.accept(run_id=s.id, env_id=env.id, org_id=env.org_id, snapshot=to_snapshot(s), now_ms=OLD,
                      idempotency=None, max_per_env=100)  # fmt: skip
        shard = buffer.shard_for(env.org_id)
        buffer.lease(shard, org_id=env.org_id, env_id=env.id, n=1, now_ms=OLD, lease_ms=60_000)
        if name == "acked":
            buffer.ack(shard, [s.id], now_ms=OLD, grace_ms=10**12)
        else:
            buffer.dead_letter(shard, s.id, now_ms=OLD, reason="environment gone")
        StuckEntry.objects.create(run_id=s.id, org_id=env.org_id, env_id=env.id, shard=shard, kind="DEAD",
                                  accepted_at=timezone.now(), first_seen_at=timezone.now(),
                                  last_seen_at=timezone.now())  # fmt: skip
        ids[name] = (s.id, env.org_id)
    gone.delete()

    out = run("fail", "--run", *(run_id for run_id, _ in ids.values())).strip()

    assert out.startswith("fail: 1 failed, 1 dead-lettered: failed by an operator; "), out
    assert out.endswith(", 1 already handled"), out
    assert buffer.get(ids["orphan"][0], org_id=ids["orphan"][1]).status == "DEAD"
    assert list(TaskRun.objects.filter(id__in=[r for r, _ in ids.values()]).values_list("id", flat=True)) == [
        ids["fine"][0]
    ]


@pytest.mark.django_db
def test_redrive_of_given_runs_touches_exactly_those(buffer):
    env = EnvironmentFactory()
    shard = buffer.shard_for(env.org_id)
    ids = []
    for _ in range(3):
        s = SnapshotFactory(env=env)
        buffer.accept(run_id=s.id, env_id=env.id, org_id=env.org_id, snapshot=to_snapshot(s), now_ms=OLD,
                      idempotency=None, max_per_env=100)  # fmt: skip
        ids.append(s.id)
    buffer.lease(shard, org_id=env.org_id, env_id=env.id, n=3, now_ms=OLD, lease_ms=60_000)
    for run_id in ids:
        buffer.dead_letter(shard, run_id, now_ms=OLD, reason="environment gone")
    for run_id in ids:
        StuckEntry.objects.create(run_id=run_id, org_id=env.org_id, env_id=env.id, shard=shard, kind="DEAD",
                                  accepted_at=timezone.now(), first_seen_at=timezone.now(),
                                  last_seen_at=timezone.now())  # fmt: skip

    assert run("redrive", "--run", ids[0]).strip() == "redrive: 1 re-driven, 0 already handled"
    assert [buffer.get(r, org_id=env.org_id).status for r in ids] == ["QUEUED", "DEAD", "DEAD"]
    assert (
        run("redrive", "--env", str(env.id)).strip()
        == f"redrive every dead letter of env {env.id}: 2 re-driven, 0 already handled"
    )
