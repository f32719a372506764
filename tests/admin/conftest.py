"""Fixtures for the operator screens: a buffer under a fresh key prefix (4 shards), entries accepted for real
tenants or bare ids, stuck-entry rows, staff users with and without the repair permission, and a Redis command counter."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone
from redis.connection import AbstractConnection

from buffer.buffer import Buffer
from buffer.values import AcceptStatus
from mollifier_project.clock import to_ms
from runs.models import Environment
from runs.snapshot import to_snapshot
from sweep.models import StuckEntry, StuckKind
from tests.factories import EnvironmentFactory, SnapshotFactory

NOW = 1_800_000_000_000


@pytest.fixture
def buffer(key_prefix, mollifier_settings) -> Buffer:
    mollifier_settings(SHARDS=4, DRAINER_ENABLED=True, STALE_SWEEP_ENABLED=True, ENABLED=True)
    return Buffer.from_settings()


@pytest.fixture
def accept(buffer):
    """Accept ``n`` entries for a real env (snapshots from ``SnapshotFactory``); returns their run ids."""

    def put(env: Environment, n: int = 1, *, now_ms: int = NOW, **snapshot_fields: object) -> list[str]:
        ids = []
        for _ in range(n):
            s = SnapshotFactory(env=env, **snapshot_fields)
            result = buffer.accept(
                run_id=s.id, env_id=env.id, org_id=env.org_id, snapshot=to_snapshot(s), now_ms=now_ms,
                idempotency=None, max_per_env=1_000_000,
            )  # fmt: skip
            assert result.status is AcceptStatus.ACCEPTED
            ids.append(s.id)
        return ids

    return put


def _staff(username: str, *perms: str) -> User:
    user = User.objects.create_user(username, password="pw", is_staff=True)
    for perm in perms:
        app, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app, codename=codename))
    return user


@pytest.fixture
def viewer_client(db) -> Client:
    """Staff who may view runs, tenants and stuck entries, but not repair anything."""
    client = Client()
    client.force_login(
        _staff(
            "viewer", "sweep.view_stuckentry", "runs.view_taskrun", "runs.view_environment", "runs.view_organization"
        )
    )
    return client


@pytest.fixture
def repairer_client(db) -> Client:
    """Staff who may view stuck entries and the buffer pages, and repair the buffer (not a superuser)."""
    client = Client()
    client.force_login(_staff("repairer", "sweep.view_stuckentry", "sweep.view_buffer", "sweep.repair_buffer"))
    return client


@dataclass
class Counter:
    """Redis traffic: ``commands`` sent (PING health checks aside) and ``round_trips`` (a pipeline is one)."""

    commands: int = 0
    round_trips: int = 0
    names: list[str] = field(default_factory=list)

    def reset(self) -> None:
        self.commands = self.round_trips = 0
        self.names.clear()


@pytest.fixture
def redis_counter(monkeypatch) -> Counter:
    """Counts every command redis-py sends, through a hook on its connection class."""
    counter = Counter()
    send_command, pack_commands = AbstractConnection.send_command, AbstractConnection.pack_commands

    def counted_send(self, *args, **kwargs):
        if str(args[0]).upper() != "PING":
            counter.commands += 1
            counter.round_trips += 1
            counter.names.append(str(args[0]))
        return send_command(self, *args, **kwargs)

    def counted_pack(self, commands):
        commands = list(commands)
        counter.commands += len(commands)
        counter.round_trips += 1
        counter.names.extend(str(c[0]) for c in commands)
        return pack_commands(self, commands)

    monkeypatch.setattr(AbstractConnection, "send_command", counted_send)
    monkeypatch.setattr(AbstractConnection, "pack_commands", counted_pack)
    return counter


def stuck(env, run_id: str, kind=StuckKind.STALE, *, age=timedelta(minutes=10), attempts=0, error="", env_id=None):
    now = timezone.now()
    return StuckEntry.objects.create(
        run_id=run_id, org_id=env.org_id, env_id=env_id or env.id, shard=0, kind=kind, accepted_at=now - age,
        first_seen_at=now, last_seen_at=now, attempts=attempts, last_error=error,
    )  # fmt: skip


@pytest.fixture
def rows(buffer, accept):
    """StuckEntry rows (tests/admin/test_stuck_entries.py, test_audit.py): Three stuck entries in the buffer (a stale one, a dead one, one with an expired lease) of two envs."""
    env_a, env_b = EnvironmentFactory(slug="alpha"), EnvironmentFactory(slug="beta")
    stale_id, dead_id = accept(env_a, 2, now_ms=to_ms(timezone.now() - timedelta(minutes=10)))
    (expired_id,) = accept(env_b, now_ms=to_ms(timezone.now() - timedelta(days=2)))
    shard_a, shard_b = buffer.shard_for(env_a.org_id), buffer.shard_for(env_b.org_id)
    buffer.lease(shard_a, org_id=env_a.org_id, env_id=env_a.id, n=2, now_ms=to_ms(timezone.now()), lease_ms=60_000)
    buffer.release(shard_a, [stale_id])
    buffer.dead_letter(shard_a, dead_id, now_ms=to_ms(timezone.now()), reason="environment gone")
    buffer.lease(shard_b, org_id=env_b.org_id, env_id=env_b.id, n=1, now_ms=to_ms(timezone.now()) - 120_000, lease_ms=1)
    return {
        "envs": (env_a, env_b),
        "stale": stuck(env_a, stale_id),
        "dead": stuck(env_a, dead_id, StuckKind.DEAD, error="environment gone"),
        "expired": stuck(env_b, expired_id, StuckKind.EXPIRED_LEASE, age=timedelta(days=2), attempts=1),
    }
