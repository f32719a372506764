"""The ``StuckEntry`` rows: recorded by the sweep, resolved once their entry has drained.

The only writers of ``StuckEntry``; the sweep (``sweep.sweep``) and, later, operator actions call them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from mollifier_project.clock import from_ms
from sweep.models import StuckEntry, StuckKind


@dataclass(frozen=True, slots=True)
class Stuck:
    """A stuck entry as the sweep read it from Redis."""

    run_id: str
    env_id: int
    org_id: int
    kind: StuckKind
    accepted_ms: int
    attempts: int
    last_error: str

    def age_ms(self, now_ms: int) -> int:
        return max(0, now_ms - self.accepted_ms)


def record(found: Sequence[Stuck], *, shard: int, now: datetime) -> list[Stuck]:
    """Upsert one row per entry (insert, or refresh kind, attempts, last error and ``last_seen_at``; a
    resolved row seen stuck again is reopened). Returns the entries that had no open row before — the
    ones worth a log line."""
    if not found:
        return []
    found = list({s.run_id: s for s in found}.values())  # one row per run, even if two reads overlapped
    ids = [s.run_id for s in found]
    already_open = set(
        StuckEntry.objects.filter(run_id__in=ids, resolved_at__isnull=True).values_list("run_id", flat=True)
    )
    rows = [
        StuckEntry(
            run_id=s.run_id,
            org_id=s.org_id,
            env_id=s.env_id,
            shard=shard,
            kind=s.kind,
            accepted_at=from_ms(s.accepted_ms),
            first_seen_at=now,
            last_seen_at=now,
            attempts=s.attempts,
            last_error=s.last_error,
            resolved_at=None,
        )
        for s in found
    ]
    StuckEntry.objects.bulk_create(
        rows,
        batch_size=1000,
        update_conflicts=True,
        unique_fields=["run_id"],
        update_fields=["org_id", "env_id", "shard", "kind", "last_seen_at", "attempts", "last_error", "resolved_at"],
    )
    return [s for s in found if s.run_id not in already_open]


def unresolved(shard: int, *, limit: int) -> list[str]:
    """Run ids of open rows of ``shard``, least recently seen first (the likeliest to have drained)."""
    rows = StuckEntry.objects.filter(shard=shard, resolved_at__isnull=True)
    return list(rows.order_by("last_seen_at", "run_id").values_list("run_id", flat=True)[:limit])


def resolve(run_ids: Iterable[str], *, now: datetime) -> int:
    """Mark rows resolved (their entry left the buffer). Returns how many were open."""
    ids = list(run_ids)
    if not ids:
        return 0
    return StuckEntry.objects.filter(run_id__in=ids, resolved_at__isnull=True).update(resolved_at=now)
