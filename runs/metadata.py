"""Run metadata updates as the SDK flushes them (docs/api.md#metadata): a replacement and/or operations.

``apply`` is pure — current metadata in, new metadata out — so the row path (under a row lock) and the
buffered path (compare-and-set on the entry's version, retried on conflict) compute exactly the same thing.

Operation semantics follow the SDK's own ``applyMetadataOperations``: ``set``, ``delete``, ``append``
(a missing key becomes a one-item list; a scalar becomes a two-item list), ``remove`` (every deep-equal
item of a list), ``increment`` (a non-number counts as 0) and ``update`` (replace the whole object). A key
that starts with ``$.`` is a path (``$.progress.done``, ``$.items[0]``); any other key is a top-level key.
An operation the SDK would leave unapplied (``remove`` from a non-list) is skipped.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from collections.abc import Sequence
from typing import Any

from runs.schemas import MetadataOperation

_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
MAX_LIST_INDEX = 10_000  # a path index past this is not applied: ``$.a[99999999]`` must not allocate a huge list


class MetadataInvalid(ValueError):
    """The update would produce metadata no JSON document holds (an increment that overflowed to Infinity)."""


class MetadataTooLarge(Exception):
    def __init__(self, size: int, limit: int):
        super().__init__(f"metadata: {size} bytes exceeds the limit of {limit} bytes")
        self.size, self.limit = size, limit


def encode(metadata: dict[str, Any]) -> str:
    try:
        return json.dumps(metadata, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise MetadataInvalid("metadata: the update makes a number that is not finite") from None


def checked(metadata: dict[str, Any], *, limit: int) -> str:
    """``metadata`` encoded, or ``MetadataTooLarge`` when its UTF-8 encoding passes ``limit`` bytes
    (``MetadataInvalid`` when it cannot be JSON at all)."""
    text = encode(metadata)
    size = len(text.encode())
    if size > limit:
        raise MetadataTooLarge(size, limit)
    return text


def apply(
    current: dict[str, Any], *, replace: dict[str, Any] | None, operations: Sequence[MetadataOperation]
) -> dict[str, Any]:
    """The metadata after the update: ``replace`` (if given) stands in for ``current``, then each operation."""
    value: Any = copy.deepcopy(replace if replace is not None else current)
    for op in operations:
        value = _apply_one(value, op)
    return value if isinstance(value, dict) else {}


def _parts(key: str) -> list[str | int]:
    return [name if name else int(index) for name, index in _PART.findall(key[2:])]


def _get(doc: Any, parts: list[str | int]) -> Any:
    for part in parts:
        if isinstance(part, int) and isinstance(doc, list) and part < len(doc):
            doc = doc[part]
        elif isinstance(part, str) and isinstance(doc, dict) and part in doc:
            doc = doc[part]
        else:
            return None
    return doc


def _set(doc: dict[str, Any], parts: list[str | int], value: Any) -> None:
    target: Any = doc
    for part, following in itertools.pairwise(parts):
        child = _get(target, [part])
        if not isinstance(child, dict | list):
            child = [] if isinstance(following, int) else {}
            _put(target, part, child)
        target = child
    _put(target, parts[-1], value)


def _put(target: Any, part: str | int, value: Any) -> None:
    if isinstance(target, dict):
        target[str(part)] = value
    elif isinstance(part, int) and isinstance(target, list) and part <= MAX_LIST_INDEX:
        target.extend([None] * (part + 1 - len(target)))
        target[part] = value


def _apply_one(doc: Any, op: MetadataOperation) -> Any:
    if op.type == "update":
        return copy.deepcopy(op.value)
    if not isinstance(doc, dict):
        doc = {}
    key = op.key or ""
    parts: list[str | int] = _parts(key) if key.startswith("$.") else [key]
    if not parts:
        return doc
    current = _get(doc, parts)
    if op.type == "set":
        _set(doc, parts, copy.deepcopy(op.value))
    elif op.type == "delete":
        if len(parts) == 1 and isinstance(parts[0], str):
            doc.pop(parts[0], None)
    elif op.type == "append":
        if current is None:
            _set(doc, parts, [copy.deepcopy(op.value)])
        elif isinstance(current, list):
            _set(doc, parts, [*current, copy.deepcopy(op.value)])
        else:
            _set(doc, parts, [current, copy.deepcopy(op.value)])
    elif op.type == "remove":
        if isinstance(current, list):
            _set(doc, parts, [item for item in current if not _equal(item, op.value)])
    elif op.type == "increment":
        base = current if isinstance(current, int | float) and not isinstance(current, bool) else 0
        _set(doc, parts, base + op.value)
    return doc


def _equal(a: Any, b: Any) -> bool:
    """Deep equality as JavaScript sees it (``True`` is not ``1``)."""
    if isinstance(a, dict | list) or isinstance(b, dict | list):
        return encode_any(a) == encode_any(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return bool(a == b)


def encode_any(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
