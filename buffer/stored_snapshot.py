"""How a snapshot is stored in its ``s:<run>`` key: plain JSON, or compressed when that pays
(docs/architecture.md#snapshot-compression).

The buffer hands plain JSON ``str`` to everything above it; this module is the only place that knows
the stored form. Two forms, told apart by the first byte:

- ``{`` … — plain JSON (every snapshot written before compression existed, the legacy ``snapshot`` hash
  field, and snapshots shorter than the threshold or that compress no smaller);
- ``\\x01``, the JSON's length in bytes (4 bytes, big-endian), then a raw deflate stream (zlib level 1,
  ``wbits=-15``) primed with ``DICTIONARY_V1``, the snapshot format's own key names. The length is for
  lease's byte budget (``lua/lease.lua`` reads it from the header: a 1 MiB payload of one repeated byte
  deflates to about 1 KiB, so the stored length alone would let a round hold a thousand times its budget
  of JSON) and a check of the inflated result. A JSON document never starts with ``\\x01``. The bytes ``\\x00`` … ``\\x08``
  are reserved for formats; an unknown one reads as corrupt, never as JSON.

The buffer's client decodes replies as UTF-8 with ``surrogateescape`` (``buffer.client.CLIENT_OPTIONS``):
compressed bytes arrive as a ``str`` whose undecodable bytes are lone surrogates, and
``str.encode("utf-8", "surrogateescape")`` gives back exactly the stored bytes. Plain JSON is valid UTF-8
and arrives unchanged.

No Lua script reads a snapshot's content (they cannot decompress): created_ms and tags come from the
caller, and lease's byte budget counts the JSON length (a compressed value's header gives it).
"""

from __future__ import annotations

import re
import zlib

COMPRESSED_V1 = "\x01"
"""First byte of a compressed snapshot (format 1: raw deflate, ``DICTIONARY_V1``)."""

_LAST_FORMAT = "\x08"
"""Bytes \x00 … \x08 name stored formats (no JSON text starts with one); only \x01 exists so far."""

LEVEL = 1
"""zlib level: 1 compresses a typical snapshot to within 2 % of level 9 at a fraction of the CPU (bench.memory)."""

DICTIONARY_V1 = (
    b'"idem_user":"","concurrency_key":"","delay_until_ms":,"ttl":"","max_duration":,"priority":0,"batch":"batch_'
    b'","batch_index":,"parent":"run_","root":"run_","depth":,"metadata":{},"payload_type":"application/json'
    b'","payload_type":"application/super+json","idem":"","idem_expires_ms":17,"queue":"task/","max_attempts":3,'
    b'"machine":"small-1x","trace_id":"","span_id":"","tags":["'
    b'{"v":1,"id":"run_","env":,"org":,"task":"","created_ms":17,"tags":[","payload":"{\\"json\\":{\\"'
)
"""The preset dictionary of format 1: the key names and common values of the snapshot format
(runs/snapshot.py), most frequent last. Frozen: a stored snapshot needs the very bytes it was written
with. A new dictionary is a new first byte."""

_CREATED_MS = re.compile(r'"created_ms":(\d+)')


class CorruptSnapshot(ValueError):
    """A stored value that claims to be a compressed snapshot and cannot be read back."""


def pack(text: str, *, min_bytes: int) -> str | bytes:
    """The value to store for ``text``: compressed bytes when ``min_bytes`` > 0, the JSON is at least that
    long and the result is shorter; else ``text`` itself."""
    if min_bytes <= 0 or len(text) < min_bytes:  # len in characters ≤ bytes: a cheap first filter
        return text
    raw = text.encode()
    if len(raw) < min_bytes:
        return text
    if len(raw) >= 2**32:
        return text
    packer = zlib.compressobj(LEVEL, zlib.DEFLATED, -15, zdict=DICTIONARY_V1)
    packed = COMPRESSED_V1.encode() + len(raw).to_bytes(4, "big") + packer.compress(raw) + packer.flush()
    return packed if len(packed) < len(raw) else text


def unpack(stored: str | None) -> str:
    """The snapshot JSON of a stored value (as the client decoded it); ``""`` for none. Raises
    ``CorruptSnapshot`` for a compressed value that does not decompress to UTF-8 text."""
    if not stored:
        return ""
    if stored[0] > _LAST_FORMAT:
        return stored  # plain JSON (or something else no reader trusts: from_snapshot refuses it)
    if stored[0] != COMPRESSED_V1:
        raise CorruptSnapshot(f"stored snapshot has an unknown format byte {ord(stored[0]):#04x}")
    data = stored.encode("utf-8", "surrogateescape")
    if len(data) < 6:
        raise CorruptSnapshot("compressed snapshot is truncated (no header)")
    length = int.from_bytes(data[1:5], "big")
    unpacker = zlib.decompressobj(-15, zdict=DICTIONARY_V1)
    try:
        raw = unpacker.decompress(data[5:], length + 1) + unpacker.flush()
        if not unpacker.eof or unpacker.unused_data or unpacker.unconsumed_tail:
            raise CorruptSnapshot("compressed snapshot is truncated or has trailing bytes")
        if len(raw) != length:
            raise CorruptSnapshot(f"compressed snapshot inflates to {len(raw)} bytes, its header says {length}")
        return raw.decode()
    except (zlib.error, UnicodeDecodeError) as exc:
        raise CorruptSnapshot(f"compressed snapshot is corrupt: {exc}") from None


def created_ms(text: str, fallback: int) -> str:
    """The snapshot's top-level ``created_ms`` (the first key of that name: the snapshot writer puts it
    before payload and metadata, and a JSON string cannot hold an unescaped ``"created_ms":``), else
    ``fallback``, as a digit string (the env index's member is built from it in Lua, as
    ``lib/env_index.lua`` always did). The index sorts by it; it is exactly the created_at the row gets."""
    found = _CREATED_MS.search(text)
    return found.group(1) if found else str(fallback)
