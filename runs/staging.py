"""Writing rows in bulk: the COPY, the staging table and ``INSERT … ON CONFLICT DO NOTHING``
(docs/architecture.md#drain-throughput).

Used by ``runs.engine`` only (an import-linter contract says so): the engine decides what a result means and
settles batches; this module only moves rows into ``TaskRun``'s table and says which went in. Every insert is
``ON CONFLICT DO NOTHING`` on the run id and the idempotency key, so a replay after a crash is a no-op rather
than a duplicate. The rows come from ``runs.rows.build``, in ``runs.rows.COLUMNS`` order.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from django.db import IntegrityError, connection, transaction
from psycopg.adapt import Dumper

from runs.models import TaskRun
from runs.rows import COLUMNS
from runs.snapshot import Snapshot

log = logging.getLogger(__name__)

_COLS = ", ".join(COLUMNS)
_TABLE = TaskRun._meta.db_table
_STAGE = "mollifier_stage"

# Called inside the write's transaction, with its cursor and the snapshots whose rows it wrote (the engine
# settles their batches there, so a batch completes in the same commit as its last child).
OnWritten = Callable[[Any, Sequence[Snapshot]], None]


def insert_one(row: tuple) -> bool:
    """Insert one row unless its id or idempotency key is taken. True if this call wrote it."""
    placeholders = ", ".join(["%s"] * len(COLUMNS))
    with connection.cursor() as cur:
        cur.execute(f"INSERT INTO {_TABLE} ({_COLS}) VALUES ({placeholders}) ON CONFLICT DO NOTHING RETURNING id", row)
        return cur.fetchone() is not None


def copy_fresh(rows: Sequence[tuple[int, Snapshot, tuple]], *, on_written: OnWritten) -> bool:
    """Binary COPY straight into the run table, in its own transaction (or savepoint), then ``on_written``
    with every snapshot. ``False`` when a unique constraint refused a row: nothing of it was kept (nor of what
    ``on_written`` did), and the caller writes the batch staged. ``rows``: (input position, snapshot, row)."""
    try:
        with transaction.atomic(), connection.cursor() as cur:
            types = _stage_types(cur)[:-1]  # before the COPY starts: no other statement can run during it
            _copy_tags_fast(cur, types)
            with cur.cursor.copy(f"COPY {_TABLE} ({_COLS}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(types)
                for _, _, row in rows:
                    copy.write_row(row)
            on_written(cur, [s for _, s, _ in rows])
    except (IntegrityError, psycopg.IntegrityError) as exc:  # the COPY runs on psycopg's cursor: unwrapped
        if getattr(exc.__cause__ or exc, "sqlstate", None) != _UNIQUE_VIOLATION:
            raise
        log.info("a fresh batch of %s rows clashed on a unique constraint; writing it staged", len(rows))
        return False
    return True


def copy_staged(
    rows: Sequence[tuple[int, Snapshot, tuple]], *, on_written: OnWritten
) -> tuple[set[str], set[str], dict[tuple[int, str, str], str]]:
    """COPY into the session-local staging table, then ``INSERT … SELECT … ORDER BY ord ON CONFLICT DO
    NOTHING``: the first of several snapshots with one id or key wins; then ``on_written`` with the snapshots
    written, in the same transaction. Returns the created ids, the ids that already had a row, and the
    holders of the keys that clashed."""
    # Inside an outer transaction, rows a prior call staged may linger (ON COMMIT has not run yet).
    nested = connection.in_atomic_block or not connection.get_autocommit()
    existing_ids: set[str] = set()
    holders: dict[tuple[int, str, str], str] = {}
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (LIKE {_TABLE} INCLUDING DEFAULTS, ord integer) "
            "ON COMMIT DELETE ROWS" + (f"; TRUNCATE {_STAGE}" if nested else "")
        )
        # Binary COPY: a third of the cost of text COPY on the client, where this path spends its time.
        types = _stage_types(cur)  # before the COPY starts: no other statement can run during it
        _copy_tags_fast(cur, types)
        with cur.cursor.copy(f"COPY {_STAGE} ({_COLS}, ord) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(types)
            for i, _, row in rows:
                copy.write_row((*row, i))
        cur.execute(
            f"INSERT INTO {_TABLE} ({_COLS}) SELECT {_COLS} FROM {_STAGE} ORDER BY ord "
            "ON CONFLICT DO NOTHING RETURNING id"
        )
        created_ids = {r[0] for r in cur.fetchall()}
        not_created = [s for _, s, _ in rows if s.id not in created_ids]
        if not_created:
            existing_ids = set(TaskRun.objects.filter(id__in={s.id for s in not_created}).values_list("id", flat=True))
            clashing = [s for s in not_created if s.id not in existing_ids and s.idempotency_key]
            if clashing:
                holders = _holders_of_keys(clashing)
        on_written(cur, [s for _, s, _ in rows if s.id in created_ids])
    return created_ids, existing_ids, holders


_UNIQUE_VIOLATION = "23505"


_STAGE_TYPES: list[int] = []
_TAGS_AT = COLUMNS.index("tags")
_ARRAY_ELEMENT = {1015: 1043, 1009: 25}  # varchar[] → varchar, text[] → text: built-in OIDs, fixed everywhere


def _tags_dumper(array_oid: int) -> type[Dumper]:
    """A binary dumper for the tags column (a one-dimensional array of strings, never NULL, no NULL items:
    ``normalise_tags`` and ``validate`` saw to that). psycopg's generic list dumper measures the list's
    dimensions and dumps each item through a sub-dumper: about 4 µs a row, half the cost of a COPY row."""
    head = struct.Struct("!iiIii")  # ndim, has-null, element type, length, lower bound
    element = _ARRAY_ELEMENT[array_oid]
    empty = struct.pack("!iiI", 0, 0, element)

    class TagsDumper(Dumper):
        format = psycopg.pq.Format.BINARY
        oid = array_oid

        def dump(self, obj: list[str]) -> bytes:
            if not obj:
                return empty
            parts = [head.pack(1, 0, element, len(obj), 1)]
            for tag in obj:
                data = tag.encode()
                parts.append(len(data).to_bytes(4, "big"))
                parts.append(data)
            return b"".join(parts)

    return TagsDumper


def _copy_tags_fast(cur: Any, types: Sequence[int]) -> None:
    """Dump the tags column with ``_tags_dumper`` in this cursor's COPY (by OID: ``Copy.set_types`` looks
    dumpers up that way). A column of another type keeps psycopg's dumper."""
    if types[_TAGS_AT] in _ARRAY_ELEMENT:
        cur.cursor.adapters.register_dumper(
            None, _TAGS_DUMPERS.setdefault(types[_TAGS_AT], _tags_dumper(types[_TAGS_AT]))
        )


_TAGS_DUMPERS: dict[int, type[Dumper]] = {}


def _stage_types(cur: Any) -> list[int]:
    """Type OIDs of ``COLUMNS`` + ``ord``, which a binary COPY needs. Read once per process: every column
    is a built-in type, whose OID is the same in every database."""
    if not _STAGE_TYPES:
        cur.execute("SELECT attname, atttypid FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0", [_TABLE])
        oids = dict(cur.fetchall())
        _STAGE_TYPES[:] = [*(oids[c] for c in COLUMNS), 23]  # ord: int4
    return _STAGE_TYPES


def _holders_of_keys(snapshots: Sequence[Snapshot]) -> dict[tuple[int, str, str], str]:
    with connection.cursor() as cur:
        cur.execute(
            f"SELECT t.env_id, t.task_identifier, t.idempotency_key, t.id FROM {_TABLE} t "
            "JOIN unnest(%s::bigint[], %s::text[], %s::text[]) AS k(env_id, task, key) "
            "ON t.env_id = k.env_id AND t.task_identifier = k.task AND t.idempotency_key = k.key",
            (
                [s.env_id for s in snapshots],
                [s.task_identifier for s in snapshots],
                [s.idempotency_key for s in snapshots],
            ),
        )
        return {(env, task, key): run_id for env, task, key, run_id in cur.fetchall()}
