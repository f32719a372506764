"""Packets: payloads too large to travel inline, stored through Django's ``STORAGES["packets"]``
(docs/api.md#packets, docs/architecture.md#packets).

The SDK offloads any payload of 128 KiB or more: it asks for an upload URL (``PUT /api/v2/packets/<path>``),
``PUT``s the bytes there, and triggers with ``payloadType: "application/store"`` and ``payload: <path>``.
Reads go the other way: a retrieve answers ``payloadPresignedUrl``, which the SDK ``GET``s.

1. Paths are the client's, but always inside its env: ``<path>`` is stored as ``<env id>/data/<path>``, so
   no key can name another env's packet — tenancy by construction, not by a check that could be forgotten.
2. A presigned URL is ``/api/v1/packet-objects/<token>``: the token is ``django.core.signing`` over
   (operation, env, path) with a timestamp, checked against ``PACKET_URL_TTL_S`` (GET) or
   ``PACKET_PUT_URL_TTL_S`` (PUT). It carries no API key, so the SDK's plain ``fetch`` of it works, and it
   cannot be turned into another operation, env or path. With ``PACKET_ORIGIN`` set it is built on, and only
   answered on, that host of its own (``url_builder``, ``served_here``).
3. The body is streamed into a spooled temporary file, refused past ``MAX_PACKET_BYTES`` (413), then saved;
   its content type goes beside it (``<env>/type/<path>``), since the SDK decodes a download by it. A packet
   is written once (``store``): the same bytes again are a harmless retry, other bytes are refused (409).
4. A packet is a tenant's bytes served from the app's own origin, so it is never active content there
   (``DOWNLOAD_HEADERS``): it is answered with one of the types the SDK decodes (``SERVED_TYPES``) or as
   ``application/octet-stream``, as an attachment, under ``nosniff`` and a sandboxing CSP. An HTML or SVG
   packet opened by a logged-in staff member is a file to save, never a page that runs with their session.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from django.core import signing
from django.core.files import File
from django.core.files.base import ContentFile
from django.core.files.storage import Storage, storages
from django.http.request import split_domain_port

from mollifier_project.logs import PACKET_OBJECT_ROUTE

STORE_TYPE = "application/store"  # the payloadType of a payload that is a packet path
OBJECT_ROUTE = PACKET_OBJECT_ROUTE  # the logs mask the token after it (mollifier_project.logs)
MAX_PATH_LENGTH = 512
_SALT = "mollifier.packets"
_SEGMENT = re.compile(r"^[A-Za-z0-9_.=+@-]{1,128}$")
_CONTENT_TYPE = re.compile(r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+$")
_CHUNK = 64 * 1024
_SPOOL_BYTES = 1024 * 1024
# The types a download keeps: the ones the SDK's parsePacket decodes (JSON, superjson, text); any other stored
# type is answered as application/octet-stream, which the SDK hands back as the raw text, as it did before.
SERVED_TYPES = frozenset({"application/json", "application/super+json", "text/plain"})
DOWNLOAD_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "sandbox; default-src 'none'",
    "Cross-Origin-Resource-Policy": "same-origin",
}


class PacketError(ValueError):
    """A path or token no packet can have; the message is for ``{"error": …}``."""


class AlreadyStored(Exception):
    """Other bytes than the stored packet's were PUT to its path: packets are written once."""

    def __init__(self, path: str):
        super().__init__(
            f"A packet is already stored at {path!r} with other bytes; packets are written once: upload to a new path"
        )


class TooLarge(Exception):
    def __init__(self, limit: int):
        super().__init__(f"Packet exceeds the limit of {limit} bytes")
        self.limit = limit


@dataclass(frozen=True, slots=True)
class Grant:
    """What a valid presigned token allows: one operation on one env's path."""

    op: str  # "put" | "get"
    env_id: int
    path: str


def storage() -> Storage:
    return storages["packets"]


def path_problem(path: object) -> str | None:
    """Why ``path`` can never name a packet (segments of letters, digits and ``_.=+@-``; no ``..``), or None."""
    if not isinstance(path, str) or not path:
        return "must be a non-empty string"
    if len(path) > MAX_PATH_LENGTH:
        return f"must be at most {MAX_PATH_LENGTH} characters"
    for segment in path.split("/"):
        if not _SEGMENT.match(segment) or segment in (".", ".."):
            return "must be '/'-separated segments of letters, digits and _.=+@- (no '..')"
    return None


def _data_key(env_id: int, path: str) -> str:
    return f"{env_id}/data/{path}"


def _type_key(env_id: int, path: str) -> str:
    return f"{env_id}/type/{path}"


# ------------------------------------------------------------------------------------------- tokens


def sign(op: str, env_id: int, path: str) -> str:
    """The token of a presigned URL for ``op`` on ``env_id``'s ``path``."""
    return signing.dumps({"o": op, "e": env_id, "p": path}, salt=_SALT)


def absolute(doc: dict[str, Any], build_absolute_uri: Callable[[str], str]) -> dict[str, Any]:
    """A run document's ``payloadPresignedUrl`` made absolute (``request.build_absolute_uri``): the SDK
    fetches it as given, with no base URL of its own."""
    if "payloadPresignedUrl" in doc:
        doc["payloadPresignedUrl"] = build_absolute_uri(doc["payloadPresignedUrl"])
    return doc


def url_builder(build_absolute_uri: Callable[[str], str], origin: str) -> Callable[[str], str]:
    """What makes a presigned URL's path absolute: ``PACKET_ORIGIN`` when one is set, else the request's host."""
    if not origin:
        return build_absolute_uri
    return lambda path: origin + path


def served_here(host: str, origin: str) -> bool:
    """Whether a request to ``host`` (``request.get_host()``) may use a presigned URL: any host without a
    ``PACKET_ORIGIN``; with one, only its hostname (cookies ignore ports, so a port alone is no separation)."""
    if not origin:
        return True
    domain, _port = split_domain_port(host)
    return domain == (urlsplit(origin).hostname or "")


def object_url(op: str, env_id: int, path: str) -> str:
    """The presigned URL's path (the view makes it absolute: the SDK fetches it as given)."""
    return OBJECT_ROUTE + sign(op, env_id, path)


def verify(token: str, *, op: str, max_age_s: int) -> Grant:
    """The grant of a token for ``op``; ``PacketError`` when it is forged, of another operation, or expired."""
    try:
        doc = signing.loads(token, salt=_SALT, max_age=max_age_s)
    except signing.SignatureExpired:
        raise PacketError("This packet URL has expired; ask for a new one") from None
    except signing.BadSignature:
        raise PacketError("This packet URL is not valid") from None
    if not isinstance(doc, dict) or doc.get("o") != op or not isinstance(doc.get("e"), int):
        raise PacketError("This packet URL is not valid for this method")
    path = doc.get("p")
    if not isinstance(path, str) or path_problem(path) is not None:
        raise PacketError("This packet URL is not valid")
    return Grant(op, doc["e"], path)


# ------------------------------------------------------------------------------------------ storage


def exists(env_id: int, path: str) -> bool:
    return storage().exists(_data_key(env_id, path))


class Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


def store(grant: Grant, body: Readable, *, content_type: str | None, limit: int) -> int:
    """Save the body read from ``body`` as the grant's packet; returns its size. Raises ``TooLarge`` past
    ``limit`` bytes (nothing is stored then).

    Write-once: a run holds only the packet's path, so bytes changed under it would change the run's payload
    (and its replays') after it was triggered. A path already stored answers its size when the same bytes come
    again (the SDK's retry of a PUT whose answer was lost), and ``AlreadyStored`` for any other bytes. Two
    first uploads racing for one path: the file-system storage creates exclusively, so the loser's copy is
    renamed, removed here and compared like a retry; a backend that overwrites silently (S3) leaves that race
    to whichever write lands last, before any trigger could name the path."""
    size = 0
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as spool:
        while chunk := body.read(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise TooLarge(limit)
            spool.write(chunk)
        kind = content_type if content_type and _CONTENT_TYPE.match(content_type) else "application/octet-stream"
        store_ = storage()
        key = _data_key(grant.env_id, grant.path)
        type_key = _type_key(grant.env_id, grant.path)
        if not store_.exists(key):
            spool.seek(0)
            saved = store_.save(key, File(spool, name=key))
            if saved == key:
                if store_.exists(type_key):  # left by an earlier upload of this path, whose data is gone
                    store_.delete(type_key)
                store_.save(type_key, ContentFile(kind.encode()))
                return size
            store_.delete(saved)  # another upload created the path first: compare with it below
        if not _same_bytes(store_, key, spool, size):
            raise AlreadyStored(grant.path)
        if not store_.exists(type_key):  # the first upload stopped between its two saves: the retry completes it
            saved = store_.save(type_key, ContentFile(kind.encode()))
            if saved != type_key:  # a concurrent retry wrote it first
                store_.delete(saved)
    return size


def _same_bytes(store_: Storage, key: str, spool: Any, size: int) -> bool:
    """Whether the stored object ``key`` holds exactly the ``size`` bytes of ``spool``."""
    if store_.size(key) != size:
        return False
    spool.seek(0)
    with store_.open(key, "rb") as stored:
        while chunk := spool.read(_CHUNK):
            if stored.read(len(chunk)) != chunk:
                return False
        return not stored.read(1)


def served_type(stored: str) -> str:
    """The Content-Type a download is answered with: the stored type if the SDK decodes it, else octet-stream."""
    return stored if stored in SERVED_TYPES else "application/octet-stream"


def open_packet(grant: Grant) -> tuple[Any, str] | None:
    """(an open binary file, the content type to serve it with) of the grant's packet, or None when it is not
    stored."""
    store_ = storage()
    key = _data_key(grant.env_id, grant.path)
    if not store_.exists(key):
        return None
    try:
        with store_.open(_type_key(grant.env_id, grant.path), "rb") as f:
            kind = f.read(256).decode("ascii", "replace")
    except (FileNotFoundError, OSError):
        kind = "application/octet-stream"
    return store_.open(key, "rb"), served_type(kind.strip())
