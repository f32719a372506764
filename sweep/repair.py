"""Repairs an operator makes to the buffer, as service functions: the ``mollifier_buffer`` command calls
them (and the admin's actions will). Each reports how many entries it changed and how many someone else
had already handled, so a repair run twice, or racing the drain, is safe to read."""

from __future__ import annotations

from dataclasses import dataclass

from buffer.buffer import Buffer

REDRIVE_BATCH = 1000


@dataclass(frozen=True, slots=True)
class Repaired:
    changed: int
    already_handled: int


def redrive(buffer: Buffer, *, now_ms: int, env_id: int | None = None, limit: int | None = None) -> Repaired:
    """Put dead letters back in their queues with attempts reset, so the drain tries them again.

    Every shard is visited (a dead letter's env may have been deleted, so its org — and shard — can no
    longer be looked up). ``env_id`` restricts it to one env; ``limit`` caps the total.
    """
    changed = handled = 0
    for shard in range(buffer.shards):
        while limit is None or changed < limit:
            batch = REDRIVE_BATCH if limit is None else min(REDRIVE_BATCH, limit - changed)
            redriven, skipped = buffer.redrive(shard, now_ms=now_ms, limit=batch, env_id=env_id)
            changed, handled = changed + redriven, handled + skipped
            if redriven < batch:
                break
    return Repaired(changed, handled)
