"""How a buffered run's snapshot and its entry's mutable fields become the run's values
(docs/architecture.md#reads-and-mutations-of-buffered-runs).

A mutation of a buffered run never rewrites its snapshot: it writes a hash field of the entry (appended
tags, a rescheduled delay, replaced metadata). Everything that turns an entry into a run — the drain's
row, a retrieve, a replay — reads it through ``effective``, so they cannot disagree about what the run is.
"""

from __future__ import annotations

import json

from buffer.values import Entry
from mollifier_project.clock import from_ms
from runs.engine import Overrides
from runs.snapshot import Snapshot, SnapshotError, normalise_tags


def effective(snapshot: Snapshot, entry: Entry) -> Snapshot:
    """``snapshot`` with ``entry``'s overrides applied: extra tags appended (deduplicated), ``delay_until_ms``
    replacing the delay, ``metadata`` replacing the metadata. Raises ``SnapshotError`` for an override that
    is not what its writer stores (the drain then fails the run visibly rather than guess)."""
    changes: dict[str, object] = {}
    if entry.extra_tags:
        changes["tags"] = normalise_tags([*snapshot.tags, *entry.extra_tags])
    if entry.delay_until_ms is not None:
        changes["delay_until"] = from_ms(entry.delay_until_ms)
    if entry.metadata is not None:
        try:
            metadata = json.loads(entry.metadata)
        except ValueError:
            raise SnapshotError("the entry's metadata field is not JSON") from None
        if not isinstance(metadata, dict):
            raise SnapshotError("the entry's metadata field is not a JSON object")
        changes["metadata"] = metadata
    return snapshot.replace(**changes) if changes else snapshot


def metadata_of(snapshot: Snapshot, entry: Entry) -> dict:
    """The run's current metadata (``{}`` when it has none)."""
    value = effective(snapshot, entry).metadata
    return value if isinstance(value, dict) else {}


def carried(effective_snapshot: Snapshot, entry: Entry) -> Overrides | None:
    """The overrides ``entry`` holds, as the values ``effective`` gave ``effective_snapshot``, for a row that
    was written without them (``engine.apply_overrides``); None when the entry holds none."""
    if not entry.extra_tags and entry.delay_until_ms is None and entry.metadata is None:
        return None
    return Overrides(
        tags=effective_snapshot.tags if entry.extra_tags else (),
        delay_until=effective_snapshot.delay_until if entry.delay_until_ms is not None else None,
        metadata=effective_snapshot.metadata if entry.metadata is not None else None,
    )
