"""The snapshot: everything needed to create a run's row later, as one versioned JSON document.

A snapshot is self-sufficient — replay never re-reads the request — and it is the only thing the buffer
stores about a run besides a few mutable hash fields (cancel, extra tags). This module is the single
definition of the format: ``to_snapshot`` writes it, ``from_snapshot`` reads it and refuses anything it
cannot trust with ``SnapshotError`` (the drainer turns that into a SYSTEM_FAILURE row, never a crash loop).

Format (version 1), compact JSON; times are integer epoch milliseconds::

    {"v": 1, "id": "run_…", "env": 7, "org": 3, "task": "hello", "created_ms": 1764220000000,
     "payload": "…", "payload_type": "application/super+json", "metadata": {…}, "tags": ["a"],
     "idem": "…", "idem_user": "…", "idem_expires_ms": …, "queue": "…", "concurrency_key": "…",
     "delay_until_ms": …, "ttl": "1h", "max_attempts": 3, "max_duration": 300, "machine": "small-1x",
     "priority": 0, "batch": "batch_…", "batch_index": 0, "parent": "run_…", "root": "run_…",
     "depth": 0, "trace_id": "…", "span_id": "…"}

Optional keys are omitted when empty, which keeps buffered entries small.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import UnionType
from typing import Any

from mollifier_project.clock import EPOCH, from_ms, to_ms
from runs import fast_json

VERSION = 1


class SnapshotError(ValueError):
    """A snapshot that cannot be trusted: not JSON, unknown version, missing or mistyped field."""


@dataclass(slots=True)
class Snapshot:
    id: str
    env_id: int
    org_id: int
    task_identifier: str
    created_at: datetime
    payload: str | None = None
    payload_type: str = "application/json"
    metadata: Any = None
    tags: list[str] = field(default_factory=list)
    idempotency_key: str | None = None
    idempotency_key_user: str | None = None
    idempotency_key_expires_at: datetime | None = None
    queue: str | None = None
    concurrency_key: str | None = None
    delay_until: datetime | None = None
    ttl: str | None = None
    max_attempts: int | None = None
    max_duration: int | None = None
    machine: str | None = None
    priority: int = 0
    batch_id: str | None = None
    batch_index: int | None = None
    parent_run_id: str | None = None
    root_run_id: str | None = None
    depth: int = 0
    trace_id: str | None = None
    span_id: str | None = None

    def replace(self, **changes: Any) -> Snapshot:
        return dataclasses.replace(self, **changes)


def normalise_tags(value: object) -> list[str]:
    """Tags as a list of strings, whatever shape they arrived in.

    Lua's cjson encodes an empty table as ``{}``, so ``{}`` and ``null`` mean "no tags"; a bare string is
    one tag; duplicates are dropped keeping first-seen order.
    """
    if type(value) is list:  # the common shape: a list of strings, de-duplicated in C
        for item in value:
            if type(item) is not str:
                break
        else:
            return list(dict.fromkeys(value))
    if value is None:
        return []
    if isinstance(value, str):
        items: list[object] = [value]
    elif isinstance(value, dict):
        items = list(value.values())
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise SnapshotError(f"tags must be a list of strings, got {type(value).__name__}")
    seen: dict[str, None] = {}
    for item in items:
        if item is None:
            continue
        seen.setdefault(item if isinstance(item, str) else str(item), None)
    return list(seen)


def _ms(value: datetime | None) -> int | None:
    return None if value is None else to_ms(value)


def _dt(value: object, key: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SnapshotError(f"{key} must be epoch milliseconds, got {value!r}")
    try:
        return EPOCH + timedelta(milliseconds=value)  # exact, and a float of ms is allowed
    except (OverflowError, ValueError) as exc:
        raise SnapshotError(f"{key} is out of range: {value!r}") from exc


# (JSON key, attribute, expected type(s) or None for "any JSON").
_OPTIONAL_FIELDS: tuple[tuple[str, str, Any], ...] = (
    ("payload", "payload", str),
    ("payload_type", "payload_type", str),
    ("metadata", "metadata", None),
    ("idem", "idempotency_key", str),
    ("idem_user", "idempotency_key_user", str),
    ("queue", "queue", str),
    ("concurrency_key", "concurrency_key", str),
    ("ttl", "ttl", str),
    ("max_attempts", "max_attempts", int),
    ("max_duration", "max_duration", int),
    ("machine", "machine", str),
    ("priority", "priority", int),
    ("batch", "batch_id", str),
    ("batch_index", "batch_index", int),
    ("parent", "parent_run_id", str),
    ("root", "root_run_id", str),
    ("depth", "depth", int),
    ("trace_id", "trace_id", str),
    ("span_id", "span_id", str),
)
_OPTIONAL_TIMES = (
    ("idem_expires_ms", "idempotency_key_expires_at"),
    ("delay_until_ms", "delay_until"),
)
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Snapshot) if f.default is not dataclasses.MISSING}


def to_snapshot(snapshot: Snapshot) -> str:
    """Serialise to the versioned JSON document (compact; empty optional fields omitted)."""
    doc: dict[str, Any] = {
        "v": VERSION,
        "id": snapshot.id,
        "env": snapshot.env_id,
        "org": snapshot.org_id,
        "task": snapshot.task_identifier,
        "created_ms": _ms(snapshot.created_at),
    }
    tags = normalise_tags(snapshot.tags)
    if tags:
        doc["tags"] = tags
    for key, attr, _ in _OPTIONAL_FIELDS:
        value = getattr(snapshot, attr)
        if value is not None and value != _DEFAULTS.get(attr, None):
            doc[key] = value
    for key, attr in _OPTIONAL_TIMES:
        value = getattr(snapshot, attr)
        if value is not None:
            doc[key] = _ms(value)
    return fast_json.dumps(doc)


def from_snapshot(text: str | bytes) -> Snapshot:
    """Parse a snapshot document. Raises ``SnapshotError`` with a reason an operator can act on.

    The drain parses every snapshot it writes, so a well-formed document takes ``_read_plain``, one pass
    over its keys; anything that pass is unsure of goes to ``_read_checked``, which says what is wrong (or,
    for what the pass only does not handle — a float time, version ``1.0`` — reads it the same way)."""
    try:
        doc = fast_json.loads(text)
    except (TypeError, ValueError) as exc:
        raise SnapshotError(f"snapshot is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise SnapshotError("snapshot is not a JSON object")
    snapshot = _read_plain(doc)
    return snapshot if snapshot is not None else _read_checked(doc)


# JSON key → (attribute, the one type a parsed value may have, or None for "any JSON") for ``_read_plain``:
# a parsed JSON value is exactly ``str``/``int``/``float``/``bool``/…, so ``type(v) is int`` also refuses a bool.
_PLAIN_FIELDS: dict[str, tuple[str, type | None]] = {key: (attr, kind) for key, attr, kind in _OPTIONAL_FIELDS}
_PLAIN_TIMES = dict(_OPTIONAL_TIMES)


def _read_plain(doc: dict[str, Any]) -> Snapshot | None:
    """The snapshot of a document whose every field has its plain type (integer times), else None."""
    get = doc.get
    version, run_id, env_id, org_id, task = get("v"), get("id"), get("env"), get("org"), get("task")
    created_ms, tags = get("created_ms"), get("tags")
    if (
        type(version) is not int or version != VERSION or type(run_id) is not str or type(env_id) is not int
        or type(org_id) is not int or type(task) is not str or type(created_ms) is not int
        or (tags is not None and type(tags) is not list)
    ):  # fmt: skip
        return None
    try:
        kwargs: dict[str, Any] = {
            "id": run_id, "env_id": env_id, "org_id": org_id, "task_identifier": task,
            "created_at": from_ms(created_ms), "tags": normalise_tags(tags),
        }  # fmt: skip
        fields = _PLAIN_FIELDS
        for key, value in doc.items():
            if value is None:
                continue
            spec = fields.get(key)
            if spec is not None:
                attr, kind = spec
                if kind is not None and type(value) is not kind:
                    return None
                kwargs[attr] = value
            elif key in _PLAIN_TIMES:
                if type(value) is not int:
                    return None
                kwargs[_PLAIN_TIMES[key]] = from_ms(value)
    except (OverflowError, ValueError):  # a time beyond datetime's range: _read_checked names it
        return None
    return Snapshot(**kwargs)


def _read_checked(doc: dict[str, Any]) -> Snapshot:
    """Every field checked in turn; the first that cannot be trusted raises ``SnapshotError`` naming it."""
    version = doc.get("v")
    if version != VERSION or isinstance(version, bool):
        raise SnapshotError(f"unsupported snapshot version {version!r} (this build reads {VERSION})")

    def required(key: str, kind: type | UnionType | tuple[type, ...]) -> Any:
        value = doc.get(key)
        if value is None or isinstance(value, bool) or not isinstance(value, kind):
            raise SnapshotError(f"snapshot field {key!r} is missing or not {getattr(kind, '__name__', kind)}")
        return value

    kwargs: dict[str, Any] = {
        "id": required("id", str),
        "env_id": required("env", int),
        "org_id": required("org", int),
        "task_identifier": required("task", str),
        "created_at": _dt(required("created_ms", int | float), "created_ms"),
        "tags": normalise_tags(doc.get("tags")),
    }
    for key, attr, kind in _OPTIONAL_FIELDS:
        value = doc.get(key)
        if value is None:
            continue
        if kind is not None and (isinstance(value, bool) or not isinstance(value, kind)):
            raise SnapshotError(f"snapshot field {key!r} must be {kind.__name__}, got {value!r}")
        kwargs[attr] = value
    for key, attr in _OPTIONAL_TIMES:
        kwargs[attr] = _dt(doc.get(key), key)
    return Snapshot(**kwargs)
