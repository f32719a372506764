"""Fixtures for direct tests of the buffer scripts and the gate: real Redis, one key prefix per test."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from buffer.buffer import Buffer
from runs.ids import new_run_id
from runs.snapshot import Snapshot, to_snapshot

SHARDS = 4


@pytest.fixture
def buffer(key_prefix, mollifier_settings) -> Buffer:
    """A buffer on the process-wide client, under this test's key prefix (removed afterwards)."""
    mollifier_settings(SHARDS=SHARDS)
    return Buffer.from_settings()


def make_snapshot(org_id: int, env_id: int, *, run_id: str | None = None, **fields) -> tuple[str, str]:
    """(run id, snapshot JSON) in the real snapshot format."""
    run_id = run_id or new_run_id()
    snapshot = Snapshot(
        id=run_id,
        env_id=env_id,
        org_id=org_id,
        task_identifier=fields.pop("task_identifier", "hello-world"),
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        **fields,
    )
    return run_id, to_snapshot(snapshot)


@pytest.fixture
def put(buffer):
    """Accept one run (or ``count`` runs) for an env and return the run id(s); asserts ACCEPTED."""

    def accept(org_id: int, env_id: int, *, now_ms: int = 1_000, count: int | None = None, **fields):
        ids = []
        for _ in range(1 if count is None else count):
            run_id, doc = make_snapshot(org_id, env_id, **fields)
            result = buffer.accept(
                run_id=run_id,
                env_id=env_id,
                org_id=org_id,
                snapshot=doc,
                now_ms=now_ms,
                idempotency=None,
                max_per_env=1_000_000,
            )
            assert result.status == "ACCEPTED", result
            ids.append(run_id)
        return ids[0] if count is None else ids

    return accept
