"""JSON for the trigger's hot path: orjson where it gives the same answer as ``json``, ``json`` where not.

Measured on the bench's trigger body and snapshot (``bench/trigger.py``; docs/architecture.md#trigger-path):
orjson parses the body about 4× and writes the snapshot about 8× faster than ``json``. Its output is
byte-for-byte ``json.dumps(…, separators=(",", ":"), ensure_ascii=False)`` for every value a validated
request can hold. Where orjson refuses what ``json`` accepts, ``json`` answers instead, so results and error
messages are ``json``'s:

* ``loads``: integers beyond 64 bits, ``NaN``/``Infinity`` literals, lone surrogate escapes, nesting deeper
  than orjson's limit — and every malformed document, so a caller sees ``json``'s ``ValueError`` (or its
  ``RecursionError``) exactly as before;
* ``dumps``: integers beyond 64 bits, non-string keys.

One difference is left: orjson writes ``NaN`` and ``Infinity`` as ``null`` where ``json`` writes the
non-JSON literals. Nothing written here can hold them — the request schema refuses them
(``runs.schemas``: ``allow_inf_nan=False``) before a snapshot exists.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(data: str | bytes) -> Any:
    """``json.loads(data)``, faster."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def dumps(value: Any) -> str:
    """``json.dumps(value, separators=(",", ":"), ensure_ascii=False)``, faster."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError: a big int, a non-str key…
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def dumps_bytes(value: Any) -> bytes:
    """``dumps`` as UTF-8 bytes (an HTTP body)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
