"""``manage.py mollifier_buffer``: each subcommand calls its service and prints what it did; bad arguments
exit non-zero with a message (CommandError) — against real Redis and Postgres."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

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

    assert run("fail", "--env", str(env.id)).strip() == "failed 2; already handled 0"
    assert set(TaskRun.objects.filter(env=env).values_list("status", flat=True)) == {"SYSTEM_FAILURE"}
    assert run("fail", "--env", str(env.id)).strip() == "failed 0; already handled 2"


@pytest.mark.django_db
def test_requeue_of_a_queued_entry_is_already_handled(buffer):
    env = stuck_env(buffer, 1)
    (row,) = StuckEntry.objects.filter(env_id=env.id)

    assert run("requeue", "--run", row.run_id).strip() == "requeued 0; already handled 1"


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
     (["fail", "--run", "run_nope"], "no open stuck entry")],
)  # fmt: skip
def test_bad_arguments_exit_non_zero_with_a_message(buffer, args, message):
    with pytest.raises(CommandError, match=message):
        run(*args)
