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
    name = f"{env.org.slug}/{env.slug}"

    assert run("pause", "--env", str(env.id)).strip() == f"env {name} paused"
    assert run("pause", "--env", str(env.id)).strip() == f"env {name} was already paused"
    assert buffer.switches(shard).paused(env.org_id, env.id)
    assert run("resume", "--org", str(env.org_id)).strip() == f"org {env.org.slug} was already resumed"
    assert run("resume", "--env", str(env.id)).strip() == f"env {name} resumed"
    assert run("close", "--env", str(env.id)).strip() == f"env {name} intake closed"
    assert buffer.switches(shard).closed_envs == {env.id}
    assert run("open", "--env", str(env.id)).strip() == f"env {name} intake open"


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


# ------------------------------------------------------------------------------------------ the audit trail


def _audited(*args: str, caplog) -> tuple[list, list]:
    from sweep.models import OperatorAction

    OperatorAction.objects.all().delete()
    caplog.clear()
    with caplog.at_level("INFO", logger="sweep.audit"):
        run(*args)
    return list(OperatorAction.objects.all()), [r for r in caplog.records if r.name == "sweep.audit"]


@pytest.mark.django_db(transaction=True)
def test_every_changing_subcommand_leaves_an_audit_row_and_a_log_line_naming_the_user(buffer, caplog):
    env = stuck_env(buffer)
    (first, second) = StuckEntry.objects.filter(env_id=env.id).order_by("run_id")
    env_label = f"{env.org.slug}/{env.slug} ({env.id})"
    cases = [
        (["requeue", "--run", first.run_id], "requeue", env_label, 1),
        (["redrive", "--run", first.run_id], "redrive", env_label, 1),
        (["redrive", "--env", str(env.id)], "redrive every dead letter", env_label, 0),
        (["fail", "--run", second.run_id], "fail", env_label, 1),
        (["pause", "--env", str(env.id)], "pause", env_label, 0),
        (["resume", "--org", str(env.org_id)], "resume", f"{env.org.slug} ({env.org_id})", 0),
        (["close", "--env", str(env.id)], "close intake", env_label, 0),
        (["open", "--env", str(env.id)], "open intake", env_label, 0),
        (["recount"], "recount", "every env", 0),
    ]
    for args, action, scope, runs in cases:
        rows, lines = _audited(*args, "--as", "carol", "--reason", f"INC-9 {action}", caplog=caplog)
        assert [(r.action, r.user, r.source, r.scope, r.run_count, r.reason) for r in rows] == [
            (action, "carol", "cli", scope, runs, f"INC-9 {action}")
        ], args
        assert [(ln.user, ln.action) for ln in lines] == [("carol", action)], args
        assert "carol" in lines[0].getMessage()
    fail_row = _audited("fail", "--run", first.run_id, caplog=caplog)[0][0]
    assert fail_row.counts["changed"] + fail_row.counts["already_handled"] == 1


@pytest.mark.django_db
def test_without_as_the_os_user_is_recorded(buffer, caplog):
    import getpass

    env = EnvironmentFactory()
    rows, lines = _audited("pause", "--env", str(env.id), caplog=caplog)

    assert [r.user for r in rows] == [getpass.getuser()] and lines[0].user == getpass.getuser()
    assert rows[0].counts == {"changed": 1, "already": 0} and rows[0].reason == ""


@pytest.mark.django_db
def test_read_only_subcommands_are_not_audited(buffer, caplog):
    stuck_env(buffer)

    assert _audited("stats", caplog=caplog) == ([], [])
    assert _audited("stuck", caplog=caplog) == ([], [])


@pytest.mark.django_db
def test_switches_accept_org_slash_env_slugs_and_an_org_slug(buffer):
    env = EnvironmentFactory()
    name = f"{env.org.slug}/{env.slug}"
    shard = buffer.shard_for(env.org_id)

    assert run("pause", "--env", name).strip() == f"env {name} paused"
    assert buffer.switches(shard).paused_envs == {env.id}
    assert run("close", "--env", name).strip() == f"env {name} intake closed"
    assert buffer.switches(shard).closed_envs == {env.id}
    assert run("pause", "--org", env.org.slug).strip() == f"org {env.org.slug} paused"
    assert buffer.switches(shard).paused_orgs == {env.org_id}
    assert run("resume", "--org", str(env.org_id)).strip() == f"org {env.org.slug} resumed"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [(["pause", "--env", "nope/prod"], "--env: no such environment: nope/prod"),
     (["open", "--env", "justone"], "org-slug/env-slug"),
     (["resume", "--org", "no-such-org"], "--org: no such organization: no-such-org")],
)  # fmt: skip
def test_an_unknown_slug_is_a_clear_error(buffer, args, message):
    with pytest.raises(CommandError, match=message):
        run(*args)
