"""``lua/cancel_many.lua`` through ``Buffer.cancel_many``: a chunk of entries flagged in one call, with the
runs to cancel in Postgres instead (acked, missing, another env's) handed back."""

from __future__ import annotations

import pytest

from buffer.buffer import Buffer
from buffer.values import MAX_CANCEL_CHUNK, AcceptStatus, EntryStatus

ORG, ENV, OTHER_ENV = 7, 70, 71


@pytest.fixture
def buffer(key_prefix, mollifier_settings) -> Buffer:
    mollifier_settings(SHARDS=1)
    return Buffer.from_settings()


def park(buffer: Buffer, run_id: str, env_id: int = ENV) -> None:
    snapshot = f'{{"v":1,"id":"{run_id}","env":{env_id},"org":{ORG},"task":"t","created_ms":1}}'
    result = buffer.accept(
        run_id=run_id, env_id=env_id, org_id=ORG, snapshot=snapshot, now_ms=1, idempotency=None, max_per_env=10_000
    )
    assert result.status is AcceptStatus.ACCEPTED


def test_flags_a_chunk_and_hands_back_what_is_not_buffered_here(buffer):
    for run_id in ("run_a", "run_b", "run_c", "run_acked"):
        park(buffer, run_id)
    park(buffer, "run_foreign", env_id=OTHER_ENV)
    buffer.cancel("run_c", org_id=ORG, env_id=ENV, now_ms=5, reason="first")
    leased = buffer.lease(0, org_id=ORG, env_id=ENV, n=10, now_ms=2, lease_ms=60_000)
    assert {e.run_id for e in leased} == {"run_a", "run_b", "run_c", "run_acked"}
    buffer.ack(0, ["run_acked"], now_ms=3, grace_ms=60_000)

    result = buffer.cancel_many(
        ["run_a", "run_b", "run_c", "run_acked", "run_foreign", "run_missing", "run_a"],
        org_id=ORG, env_id=ENV, now_ms=10, reason="bulk",
    )  # fmt: skip

    assert (result.flagged, result.already) == (2, 1)
    assert result.to_postgres == ["run_acked", "run_foreign", "run_missing"]
    a, c, foreign = buffer.get_many(["run_a", "run_c", "run_foreign"], org_id=ORG, snapshot=False)
    assert a is not None and (a.cancelled_at_ms, a.cancel_reason, a.status) == (10, "bulk", EntryStatus.LEASED)
    assert c is not None and (c.cancelled_at_ms, c.cancel_reason) == (5, "first")  # the first cancel stays
    assert foreign is not None and foreign.cancelled_at_ms is None  # another env's entry is untouched


def test_a_rerun_chunk_flags_nothing_twice(buffer):
    park(buffer, "run_x")
    first = buffer.cancel_many(["run_x"], org_id=ORG, env_id=ENV, now_ms=10, reason="bulk")
    again = buffer.cancel_many(["run_x"], org_id=ORG, env_id=ENV, now_ms=20, reason="bulk")
    assert (first.flagged, again.flagged, again.already) == (1, 0, 1)
    entry = buffer.get("run_x", org_id=ORG, snapshot=False)
    assert entry is not None and entry.cancelled_at_ms == 10


def test_a_chunk_is_bounded(buffer):
    assert buffer.cancel_many([], org_id=ORG, env_id=ENV, now_ms=1, reason="r").to_postgres == []
    with pytest.raises(ValueError, match="at most"):
        buffer.cancel_many([f"run_{i}" for i in range(MAX_CANCEL_CHUNK + 1)], org_id=ORG, env_id=ENV, now_ms=1,
                           reason="r")  # fmt: skip
