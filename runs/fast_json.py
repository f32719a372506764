"""JSON for the trigger's hot path: orjson where it gives the same answer as ``json``, ``json`` where not.

Measured on the bench's trigger body and snapshot (``bench/trigger.py``; docs/architecture.md#trigger-path),
timeit on this project's 2-core machine under load: ``loads`` takes the body in about 27 µs where ``json``
takes 63 µs (orjson alone: 9–17 µs; the rest is the long-digit check below), ``dumps`` writes the snapshot
in 5 µs where ``json`` takes 40–60 µs. Its output is byte-for-byte
``json.dumps(…, separators=(",", ":"), ensure_ascii=False)`` for every value a validated
request can hold. Where orjson refuses what ``json`` accepts, ``json`` answers instead, so results and error
messages are ``json``'s:

* ``loads``: ``NaN``/``Infinity`` literals, lone surrogate escapes, nesting deeper than orjson's limit — and
  every malformed document, so a caller sees ``json``'s ``ValueError`` (or its ``RecursionError``) exactly
  as before. orjson reads an integer beyond 64 bits as a float, silently losing digits, so a document with
  a run of 20 or more digits anywhere (a cheap, conservative test: 19 digits always fit) goes to ``json``;
* ``dumps``: integers beyond 64 bits, non-string keys.

One difference is left: orjson writes ``NaN`` and ``Infinity`` as ``null`` where ``json`` writes the
non-JSON literals. Nothing written here can hold them — the request schema refuses them
(``runs.schemas``: ``allow_inf_nan=False``) before a snapshot exists.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

# Every byte to "0" if it is a digit, else to " ": a run of 20 digits is then one substring test (C speed,
# a few µs per KB where a regular expression took ten times that).
_DIGITS_ONLY = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
_TWENTY_DIGITS = b"0" * 20


def loads(data: str | bytes) -> Any:
    """``json.loads(data)``, faster."""
    raw = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
    if _TWENTY_DIGITS in raw.translate(_DIGITS_ONLY):  # maybe an int beyond 64 bits: json keeps its digits
        return json.loads(data)
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
