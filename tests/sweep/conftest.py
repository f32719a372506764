"""Fixtures for the stale sweep and telemetry: a buffer under a fresh key prefix, entries parked at chosen
times, and one-call passes with small caps."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from buffer.buffer import Buffer
from buffer.values import AcceptStatus
from runs.ids import new_run_id
from runs.snapshot import Snapshot, to_snapshot
from sweep import sweep

THRESHOLD_MS = 10_000


@pytest.fixture
def buffer(key_prefix, mollifier_settings) -> Buffer:
    mollifier_settings(SHARDS=1, STALE_SWEEP_ENABLED=True)
    return Buffer.from_settings()


@pytest.fixture
def park(buffer):
    """Accept ``count`` entries for (org, env) at ``now_ms``; returns their run ids (org/env need no rows)."""

    def accept(org_id: int, env_id: int, *, now_ms: int, count: int = 1) -> list[str]:
        ids = []
        for _ in range(count):
            run_id = new_run_id()
            doc = to_snapshot(
                Snapshot(id=run_id, env_id=env_id, org_id=org_id, task_identifier="t",
                         created_at=datetime.fromtimestamp(now_ms / 1000, tz=UTC))
            )  # fmt: skip
            result = buffer.accept(
                run_id=run_id, env_id=env_id, org_id=org_id, snapshot=doc, now_ms=now_ms, idempotency=None,
                max_per_env=1_000_000,
            )  # fmt: skip
            assert result.status == AcceptStatus.ACCEPTED
            ids.append(run_id)
        return ids

    return accept


@pytest.fixture
def sweep_pass(buffer):
    """One pass over shard 0 at ``now_ms`` (threshold 10 s, caps as given)."""

    def run(now_ms: int, *, max_orgs: int = 100, max_entries: int = 1000, shard: int = 0) -> sweep.PassReport:
        return sweep.sweep_shard(
            buffer,
            shard=shard,
            now_ms=now_ms,
            limits=sweep.SweepLimits(older_than_ms=THRESHOLD_MS, max_orgs=max_orgs, max_entries=max_entries),
        )

    return run


def counts(buffer, shard: int = 0) -> dict[int, int]:
    return {int(env): int(n) for env, n in buffer._client.hgetall(buffer.keys(shard).sweep_counts).items()}
