"""Fixtures for drain tests: a buffer under a fresh key prefix and a way to park snapshots in it."""

from __future__ import annotations

import time

import pytest

from buffer.buffer import Buffer
from buffer.values import AcceptStatus
from runs.snapshot import Snapshot, to_snapshot


@pytest.fixture
def buffer(key_prefix, mollifier_settings):
    mollifier_settings(SHARDS=1, DRAINER_ENABLED=True)
    return Buffer.from_settings()


@pytest.fixture
def cfg(settings):
    return settings.MOLLIFIER


@pytest.fixture
def park(buffer):
    """Accept snapshots into the buffer as the trigger path would; returns their run ids."""

    def accept(*snapshots: Snapshot, now_ms: int | None = None, raw: str | None = None) -> list[str]:
        ids = []
        for s in snapshots:
            result = buffer.accept(
                run_id=s.id, env_id=s.env_id, org_id=s.org_id, snapshot=raw if raw is not None else to_snapshot(s),
                now_ms=now_ms if now_ms is not None else time.time_ns() // 1_000_000, idempotency=None,
                max_per_env=1_000_000,
            )  # fmt: skip
            assert result.status == AcceptStatus.ACCEPTED
            ids.append(s.id)
        return ids

    return accept
