"""``runs.locate``: the one answer to "where is this run?" — row, buffered entry, in flight or nowhere —
against real Postgres and Redis, including tenancy (another env's run is nowhere)."""

from __future__ import annotations

import pytest

from buffer.buffer import Buffer
from buffer.values import AcceptStatus, EntryStatus
from runs import engine
from runs.auth import EnvContext
from runs.locate import Where, locate, locate_many
from runs.models import TaskRun
from runs.snapshot import to_snapshot
from tests.factories import EnvironmentFactory, SnapshotFactory

pytestmark = pytest.mark.django_db

NOW = 1_000_000


@pytest.fixture
def buffer(key_prefix, mollifier_settings) -> Buffer:
    mollifier_settings(SHARDS=2)
    return Buffer.from_settings()


def ctx(env) -> EnvContext:
    return EnvContext(env.id, env.org_id, env.slug, env.type, env.org.slug, False)


def park(buffer: Buffer, snapshot) -> None:
    result = buffer.accept(
        run_id=snapshot.id, env_id=snapshot.env_id, org_id=snapshot.org_id, snapshot=to_snapshot(snapshot),
        now_ms=NOW, idempotency=None, max_per_env=100,
    )  # fmt: skip
    assert result.status is AcceptStatus.ACCEPTED


def lease_all(buffer: Buffer, env) -> list[str]:
    shard = buffer.shard_for(env.org_id)
    return [e.run_id for e in buffer.lease(shard, org_id=env.org_id, env_id=env.id, n=100, now_ms=NOW, lease_ms=30_000)]


def test_a_row_is_found_as_a_row():
    env = EnvironmentFactory()
    snapshot = SnapshotFactory(env=env)
    engine.trigger(snapshot)

    found = locate(ctx(env), snapshot.id, buffer=Buffer.from_settings())

    assert found.where is Where.ROW
    assert found.row is not None and found.row.id == snapshot.id and found.entry is None


def test_a_queued_entry_is_buffered_with_its_snapshot(buffer):
    env = EnvironmentFactory()
    snapshot = SnapshotFactory(env=env)
    park(buffer, snapshot)

    found = locate(ctx(env), snapshot.id, buffer=buffer)

    assert found.where is Where.BUFFERED
    assert found.entry is not None and found.entry.status is EntryStatus.QUEUED
    assert found.entry.snapshot == to_snapshot(snapshot)


def test_a_leased_entry_is_buffered_and_says_so(buffer):
    env = EnvironmentFactory()
    snapshot = SnapshotFactory(env=env)
    park(buffer, snapshot)
    assert lease_all(buffer, env) == [snapshot.id]

    found = locate(ctx(env), snapshot.id, buffer=buffer, snapshot=False)

    assert found.where is Where.BUFFERED
    assert found.entry is not None and found.entry.status is EntryStatus.LEASED
    assert found.entry.snapshot == ""  # asked without the snapshot: it was not moved


def test_an_acked_entry_whose_row_is_visible_is_a_row(buffer):
    env = EnvironmentFactory()
    snapshot = SnapshotFactory(env=env)
    park(buffer, snapshot)
    lease_all(buffer, env)
    engine.materialise_many([snapshot])
    buffer.ack(buffer.shard_for(env.org_id), [snapshot.id], now_ms=NOW, grace_ms=30_000)

    found = locate(ctx(env), snapshot.id, buffer=buffer)

    assert found.where is Where.ROW and found.row is not None


def test_an_acked_entry_in_its_grace_without_a_visible_row_is_in_flight(buffer):
    """The ack came before our read of the row (here: the row does not exist at all): retry later."""
    env = EnvironmentFactory()
    snapshot = SnapshotFactory(env=env)
    park(buffer, snapshot)
    lease_all(buffer, env)
    buffer.ack(buffer.shard_for(env.org_id), [snapshot.id], now_ms=NOW, grace_ms=30_000)
    assert not TaskRun.objects.filter(id=snapshot.id).exists()

    found = locate(ctx(env), snapshot.id, buffer=buffer)

    assert found.where is Where.IN_FLIGHT
    assert found.entry is not None and found.entry.status is EntryStatus.ACKED


def test_a_dead_letter_is_buffered(buffer):
    env = EnvironmentFactory()
    snapshot = SnapshotFactory(env=env)
    park(buffer, snapshot)
    buffer.dead_letter(buffer.shard_for(env.org_id), snapshot.id, now_ms=NOW, reason="env deleted")

    found = locate(ctx(env), snapshot.id, buffer=buffer)

    assert found.where is Where.BUFFERED
    assert found.entry is not None and found.entry.status is EntryStatus.DEAD


def test_an_unknown_run_is_nowhere(buffer):
    env = EnvironmentFactory()

    assert locate(ctx(env), "run_" + "0" * 25, buffer=buffer).where is Where.NOWHERE


def test_another_envs_row_and_entry_are_nowhere(buffer):
    mine, theirs = EnvironmentFactory(), EnvironmentFactory()
    sibling = EnvironmentFactory(org=mine.org)  # same org, other env: still not ours
    row, entry, sibling_entry = SnapshotFactory(env=theirs), SnapshotFactory(env=theirs), SnapshotFactory(env=sibling)
    engine.trigger(row)
    park(buffer, entry)
    park(buffer, sibling_entry)

    found = locate_many(ctx(mine), [row.id, entry.id, sibling_entry.id], buffer=buffer)

    assert {run_id: f.where for run_id, f in found.items()} == {
        row.id: Where.NOWHERE, entry.id: Where.NOWHERE, sibling_entry.id: Where.NOWHERE,
    }  # fmt: skip
    assert locate(ctx(theirs), row.id, buffer=buffer).where is Where.ROW
    assert locate(ctx(sibling), sibling_entry.id, buffer=buffer).where is Where.BUFFERED


def test_locate_many_answers_each_run_as_locate_does(buffer):
    env = EnvironmentFactory()
    as_row, queued, leased = SnapshotFactory(env=env), SnapshotFactory(env=env), SnapshotFactory(env=env)
    engine.trigger(as_row)
    park(buffer, leased)
    lease_all(buffer, env)
    park(buffer, queued)
    ids = [as_row.id, queued.id, leased.id, "run_" + "1" * 25]

    many = locate_many(ctx(env), ids, buffer=buffer, snapshot=False)

    assert [many[i].where for i in ids] == [Where.ROW, Where.BUFFERED, Where.BUFFERED, Where.NOWHERE]
    assert [many[i].where for i in ids] == [locate(ctx(env), i, buffer=buffer).where for i in ids]
    assert many[leased.id].entry.status is EntryStatus.LEASED
