"""``demo.storm.buffered_depth``: the demo's "in buffer" figure counts queued, retrying and leased entries."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from buffer.buffer import Buffer
from demo.storm import buffered_depth
from runs.ids import new_run_id
from runs.snapshot import Snapshot, to_snapshot

pytestmark = pytest.mark.django_db


@pytest.fixture
def buffer(key_prefix, mollifier_settings) -> Buffer:
    mollifier_settings(SHARDS=4)
    return Buffer.from_settings()


def _accept(buffer: Buffer, org_id: int, env_id: int, count: int) -> None:
    for _ in range(count):
        run_id = new_run_id()
        snapshot = Snapshot(
            id=run_id,
            env_id=env_id,
            org_id=org_id,
            task_identifier="storm-task",
            created_at=datetime(2026, 1, 1, tzinfo=UTC),
        )
        result = buffer.accept(
            run_id=run_id,
            env_id=env_id,
            org_id=org_id,
            snapshot=to_snapshot(snapshot),
            now_ms=1_000,
            idempotency=None,
            max_per_env=1_000_000,
        )
        assert result.status == "ACCEPTED", result


def test_an_empty_buffer_has_depth_zero(buffer):
    assert buffered_depth(buffer) == 0


def test_depth_counts_queued_retrying_and_leased_entries_until_acked(buffer):
    _accept(buffer, org_id=1, env_id=11, count=5)
    _accept(buffer, org_id=2, env_id=22, count=3)
    assert buffered_depth(buffer) == 8

    shard = buffer.shard_for(1)
    leased = buffer.lease(shard, org_id=1, env_id=11, n=2, now_ms=2_000, lease_ms=30_000)
    assert len(leased) == 2
    assert buffered_depth(buffer) == 8  # in flight still counts

    buffer.requeue(shard, leased[0].run_id, now_ms=2_100, delay_ms=60_000, error="boom")
    assert buffered_depth(buffer) == 8  # waiting to retry still counts

    buffer.ack(shard, [leased[1].run_id], now_ms=2_200, grace_ms=30)
    assert buffered_depth(buffer) == 7
