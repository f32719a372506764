"""A round of entries cancelled while buffered (a bulk cancel's storm) is written as CANCELED rows in one
insert, each with its one ``run_cancelled`` event and no ``run_created``; what the insert cannot write (a
live row with the id, a key held by another run) still ends CANCELED through the one-by-one path."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from drainer import drain
from drainer.limits import DrainLimits
from runs import engine
from runs.models import RunStatus, TaskRun
from runs.signals import run_cancelled, run_created
from tests.factories import EnvironmentFactory, SnapshotFactory

pytestmark = pytest.mark.django_db


def test_a_cancelled_round_is_one_insert_with_one_event_per_run(buffer, park, cfg):
    env = EnvironmentFactory()
    snaps = [SnapshotFactory(env=env) for _ in range(200)]
    park(*snaps)
    ids = [s.id for s in snaps]
    assert (
        buffer.cancel_many(ids, org_id=env.org_id, env_id=env.id, now_ms=1_700_000_000_000, reason="storm").flagged
        == 200
    )
    cancelled, created = [], []
    run_cancelled.connect(lambda **kw: cancelled.append(kw["run_id"]), weak=False, dispatch_uid="t-bulk-c")
    run_created.connect(lambda **kw: created.append(kw["run_id"]), weak=False, dispatch_uid="t-bulk-r")
    try:
        with CaptureQueriesContext(connection) as queries:
            report = drain.drain_shard(buffer, shard=0, limits=DrainLimits.from_settings(cfg))
    finally:
        run_cancelled.disconnect(dispatch_uid="t-bulk-c")
        run_created.disconnect(dispatch_uid="t-bulk-r")
    assert report.cancelled == 200
    assert sorted(cancelled) == sorted(ids) and created == []
    rows = TaskRun.objects.filter(id__in=ids)
    assert set(rows.values_list("status", flat=True)) == {RunStatus.CANCELED}
    assert {r.error["raw"] for r in rows} == {"storm"}
    assert {int(r.completed_at.timestamp() * 1000) for r in rows} == {1_700_000_000_000}
    assert len(queries) < 30  # not a handful of statements per run


def test_what_the_bulk_insert_cannot_write_still_ends_canceled(buffer, park, cfg):
    env = EnvironmentFactory()
    live = SnapshotFactory(env=env)
    engine.trigger(live)  # a live row with the id: an earlier drain's ack was lost
    holder = SnapshotFactory(env=env, idempotency_key="k")
    engine.trigger(holder)
    clash = SnapshotFactory(env=env, idempotency_key="k")
    plain = SnapshotFactory(env=env)
    park(live, clash, plain)
    buffer.cancel_many([live.id, clash.id, plain.id], org_id=env.org_id, env_id=env.id, now_ms=1, reason="r")
    drain.drain_shard(buffer, shard=0, limits=DrainLimits.from_settings(cfg))
    statuses = dict(TaskRun.objects.filter(env=env).values_list("id", "status"))
    assert statuses[live.id] == statuses[clash.id] == statuses[plain.id] == RunStatus.CANCELED
    assert statuses[holder.id] == RunStatus.PENDING  # the key's live run is left alone
    assert TaskRun.objects.get(id=clash.id).idempotency_key is None
