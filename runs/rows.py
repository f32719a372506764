"""The row a snapshot becomes, and whether it can become one (docs/architecture.md#run-engine).

Pure, apart from one read: ``build`` gives the row of ``COLUMNS`` — the one shape whether a run is written at
trigger time, in bulk by the drain, or as a CANCELED / SYSTEM_FAILURE row; ``validate`` says why a snapshot can
never be inserted (checked before a bulk insert, so one bad snapshot cannot abort a whole COPY);
``missing_references`` reads whether its env, org and batch exist; ``terminal_snapshot`` trims a snapshot until
a CANCELED or SYSTEM_FAILURE row can always hold it. ``runs.engine`` is their caller, and the only writer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from django.db import connection
from django.db.models import Field
from psycopg.types.json import Jsonb

from runs.models import (
    MAX_IDEMPOTENCY_KEY_LENGTH,
    MAX_TAG_LENGTH,
    MAX_TAGS,
    BatchTaskRun,
    Environment,
    RunStatus,
    TaskRun,
)
from runs.snapshot import Snapshot, normalise_tags

# Column order shared by the single-row INSERT, the COPY into staging and the INSERT … SELECT.
COLUMNS = (
    "id", "env_id", "org_id", "task_identifier", "status", "payload", "payload_type", "metadata", "tags",
    "idempotency_key", "idempotency_key_user", "idempotency_key_expires_at", "queue", "concurrency_key",
    "delay_until", "ttl", "max_attempts", "max_duration", "machine", "priority", "batch_id", "batch_index",
    "parent_run_id", "root_run_id", "depth", "trace_id", "span_id", "error", "created_at", "materialised_at",
    "buffered", "completed_at", "updated_at",
)  # fmt: skip
_ENVS = Environment._meta.db_table
_BATCHES = BatchTaskRun._meta.db_table

# Snapshot text attributes → the column length they must fit (None: unbounded). Checked before a bulk
# insert: one value Postgres rejects would otherwise abort the COPY, and with it the whole batch.
_MAX_LENGTH: dict[str, int | None] = {
    attr: cast("Field[Any, Any]", TaskRun._meta.get_field(attr)).max_length  # concrete columns, never relations
    for attr in (
        "id", "task_identifier", "payload", "payload_type", "idempotency_key", "idempotency_key_user", "queue",
        "concurrency_key", "ttl", "machine", "parent_run_id", "root_run_id", "trace_id", "span_id",
    )
}  # fmt: skip
_MAX_LENGTH["batch_id"] = BatchTaskRun._meta.get_field("id").max_length
_INT_ATTRS = ("priority", "max_attempts", "max_duration", "batch_index", "depth")  # all int4 columns
_INT4_MIN, _INT4_MAX = -(2**31), 2**31 - 1
# Postgres text cannot hold NUL; UTF-8 cannot encode a lone surrogate. JSON lets both in ("\u0000", "\ud800").
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class InvalidRun(ValueError):
    """The snapshot can never become a row (unknown env, too many tags…)."""


def build(
    s: Snapshot,
    *,
    now: datetime,
    buffered: bool,
    status: str | None = None,
    error: dict[str, Any] | None = None,
    completed_at: datetime | None = None,
    keep_idempotency_key: bool = True,
    tags: list[str] | None = None,
) -> tuple:
    """The row for ``s`` in ``COLUMNS`` order. ``created_at`` is the snapshot's trigger time. ``tags``:
    ``s.tags`` normalised already (the bulk path normalises once per snapshot, not twice)."""
    if status is None:
        status = RunStatus.DELAYED if s.delay_until is not None and s.delay_until > now else RunStatus.PENDING
    key = s.idempotency_key if keep_idempotency_key else None
    return (
        s.id, s.env_id, s.org_id, s.task_identifier, str(status), s.payload, s.payload_type,
        None if s.metadata is None else Jsonb(s.metadata), normalise_tags(s.tags) if tags is None else tags,
        key, s.idempotency_key_user if key else None, s.idempotency_key_expires_at if key else None,
        s.queue, s.concurrency_key, s.delay_until, s.ttl, s.max_attempts, s.max_duration, s.machine,
        s.priority, s.batch_id, s.batch_index, s.parent_run_id, s.root_run_id, s.depth, s.trace_id,
        s.span_id, None if error is None else Jsonb(error), s.created_at, now, buffered, completed_at, now,
    )  # fmt: skip


def validate(s: Snapshot, *, tags: list[str] | None = None) -> str | None:
    """Why ``s`` can never be inserted as given, or None. Checked before a bulk insert so one bad
    snapshot cannot abort the whole transaction. ``tags``: as for ``build``.

    The drain validates every row it writes: ``_plainly_valid`` passes a good snapshot in one sweep, and
    only a snapshot it doubts goes through ``_why_invalid``, the check of record, for its reason."""
    if tags is None:
        tags = normalise_tags(s.tags)
    return None if _plainly_valid(s, tags) else _why_invalid(s, tags)


_TEXT_LIMITS = tuple(_MAX_LENGTH.items())


def _plainly_valid(s: Snapshot, tags: list[str]) -> bool:
    """True only if ``_why_invalid`` finds nothing: the same limits, with the NUL / surrogate test run
    once over all the text (a joined string holds one exactly when one of its parts does)."""
    task, key = s.task_identifier, s.idempotency_key
    if (
        not task
        or len(task) > 128
        or len(tags) > MAX_TAGS
        or (key is not None and len(key) > MAX_IDEMPOTENCY_KEY_LENGTH)
    ):
        return False
    if (s.batch_id is None) != (s.batch_index is None) or not 0 <= s.depth <= _INT4_MAX:
        return False
    if not _INT4_MIN <= s.priority <= _INT4_MAX:
        return False
    for value in (s.max_attempts, s.max_duration, s.batch_index):
        if value is not None and not 0 <= value <= _INT4_MAX:
            return False
    texts = list(tags)
    for attr, limit in _TEXT_LIMITS:
        value = getattr(s, attr)
        if value is not None:
            if limit is not None and len(value) > limit:
                return False
            texts.append(value)
    try:
        if any(len(t) > MAX_TAG_LENGTH for t in tags) or not _storable("".join(texts)):
            return False
    except TypeError:  # a value of the wrong type: _why_invalid meets it as before
        return False
    return s.metadata is None or _storable_json(s.metadata)


def _why_invalid(s: Snapshot, tags: list[str]) -> str | None:
    """The first reason ``s`` can never be inserted, checked in turn, or None."""
    if not s.task_identifier or len(s.task_identifier) > 128:
        return "task identifier must be 1–128 characters"
    if len(tags) > MAX_TAGS:
        return f"runs can have at most {MAX_TAGS} tags, got {len(tags)}"
    if any(len(t) > MAX_TAG_LENGTH for t in tags):
        return f"tags must be at most {MAX_TAG_LENGTH} characters"
    if s.idempotency_key is not None and len(s.idempotency_key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        return f"idempotency key must be at most {MAX_IDEMPOTENCY_KEY_LENGTH} characters"
    if (s.batch_id is None) != (s.batch_index is None):
        return "batch id and batch index must be given together"
    if s.depth < 0:
        return "depth must be non-negative"
    if s.max_attempts is not None and s.max_attempts < 0:
        return "max attempts must be non-negative"
    if s.max_duration is not None and s.max_duration < 0:
        return "max duration must be non-negative"
    if s.batch_index is not None and s.batch_index < 0:
        return "batch index must be non-negative"
    for attr, limit in _MAX_LENGTH.items():
        value = getattr(s, attr)
        if value is None:
            continue
        if limit is not None and len(value) > limit:
            return f"{attr} must be at most {limit} characters"
        if not _storable(value):
            return f"{attr} contains a NUL character or an unpaired surrogate"
    if not all(_storable(t) for t in tags):
        return "tags contain a NUL character or an unpaired surrogate"
    if s.metadata is not None and not _storable_json(s.metadata):
        return "metadata contains a NUL character, an unpaired surrogate or a non-finite number"
    for attr in _INT_ATTRS:
        value = getattr(s, attr)
        if value is not None and not _INT4_MIN <= value <= _INT4_MAX:
            return f"{attr} is out of range"
    return None


def _storable(text: str) -> bool:
    # isascii() is O(1) in CPython, so the common case costs one memchr.
    return "\x00" not in text if text.isascii() else _UNSTORABLE.search(text) is None


def _storable_json(value: object) -> bool:
    if isinstance(value, str):
        return _storable(value)
    if isinstance(value, float):
        return math.isfinite(value)  # json.loads accepts NaN/Infinity; jsonb does not
    if isinstance(value, dict):
        return all(_storable(str(k)) and _storable_json(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(_storable_json(v) for v in value)
    return True


def _int4(value: int | None, default: int | None, *, minimum: int = _INT4_MIN) -> int | None:
    return value if value is not None and minimum <= value <= _INT4_MAX else default


def _sanitised_for_failure(s: Snapshot) -> Snapshot:
    """A failure row must always be writable: trim or drop whatever would violate a column constraint
    (often the very reason the run failed). The id and the batch link are never rewritten here."""
    changes: dict[str, Any] = {
        attr: _UNSTORABLE.sub("\ufffd", value)[:limit]
        for attr, limit in _MAX_LENGTH.items()
        if attr not in ("id", "batch_id", "idempotency_key") and (value := getattr(s, attr)) is not None
    }
    key = s.idempotency_key
    if key is not None and (len(key) > MAX_IDEMPOTENCY_KEY_LENGTH or not _storable(key)):
        key = None
    changes["task_identifier"] = changes.get("task_identifier") or "unknown"
    batch_index = _int4(s.batch_index, None, minimum=0)
    return s.replace(
        **changes,
        tags=[_UNSTORABLE.sub("\ufffd", t)[:MAX_TAG_LENGTH] for t in normalise_tags(s.tags)][:MAX_TAGS],
        idempotency_key=key,
        metadata=s.metadata if s.metadata is None or _storable_json(s.metadata) else None,
        depth=_int4(s.depth, 0, minimum=0),
        priority=_int4(s.priority, 0),
        max_attempts=_int4(s.max_attempts, None, minimum=0),
        max_duration=_int4(s.max_duration, None, minimum=0),
        batch_id=s.batch_id if batch_index is not None else None,
        batch_index=batch_index if s.batch_id is not None else None,
    )


def terminal_snapshot(snapshot: Snapshot) -> Snapshot:
    """``snapshot`` as a CANCELED / SYSTEM_FAILURE row can hold it; ``InvalidRun`` when no row can be
    written under its id (bad id, env gone or of another org). A vanished batch is dropped, not fatal."""
    s = _sanitised_for_failure(snapshot)
    if len(s.id) > (_MAX_LENGTH["id"] or 0) or not _storable(s.id):
        raise InvalidRun(f"run id {s.id!r} cannot be stored")
    missing = missing_references([s]).get(s.id)
    if missing and s.batch_id and "batch" in missing:
        s = s.replace(batch_id=None, batch_index=None)  # keep the row; a vanished batch cannot be kept
        missing = missing_references([s]).get(s.id)
    if missing:
        raise InvalidRun(missing)
    return s


def missing_references(snapshots: Sequence[Snapshot]) -> dict[str, str]:
    """Run id → reason for snapshots whose env (or env/org pair) or batch does not exist. Two queries."""
    # Plain SQL, not the ORM: a quiet env's round is one or two runs, and compiling these querysets was a
    # quarter of its drain cost (docs/architecture.md#drain-latency).
    with connection.cursor() as cur:
        cur.execute(f"SELECT id, org_id FROM {_ENVS} WHERE id = ANY(%s)", [list({s.env_id for s in snapshots})])
        env_org = dict(cur.fetchall())
        batch_ids = list({s.batch_id for s in snapshots if s.batch_id})
        batch_env: dict[str, int] = {}
        if batch_ids:
            cur.execute(f"SELECT id, env_id FROM {_BATCHES} WHERE id = ANY(%s)", [batch_ids])
            batch_env = dict(cur.fetchall())
    reasons: dict[str, str] = {}
    for s in snapshots:
        if s.env_id not in env_org:
            reasons[s.id] = f"environment {s.env_id} does not exist"
        elif env_org[s.env_id] != s.org_id:
            reasons[s.id] = f"environment {s.env_id} does not belong to organization {s.org_id}"
        elif s.batch_id and batch_env.get(s.batch_id) != s.env_id:
            reasons[s.id] = f"batch {s.batch_id} does not exist in environment {s.env_id}"
    return reasons


def cancelled_fields(flag: tuple[datetime, str] | None) -> dict[str, Any]:
    """``build`` arguments of a CANCELED row (as ``create_cancelled_run`` writes it), or none."""
    if flag is None:
        return {}
    at, reason = flag
    return {"status": RunStatus.CANCELED, "error": {"type": "STRING_ERROR", "raw": reason}, "completed_at": at}
