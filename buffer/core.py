"""What every side of the buffer shares: construction, the key space and reading entries back.

``BufferCore`` holds the client, the registered scripts and the key space (``prefix``, ``shards``); the three
sides — ``buffer.trigger_side``, ``buffer.drain_side``, ``buffer.operator_side`` — extend it, and
``buffer.buffer.Buffer`` composes them (docs/architecture.md#the-redis-buffer).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

import redis
from django.conf import settings

from buffer.breaker import Breaker
from buffer.client import Profile, breaker_of, buffer_redis_url, client_for, uses_client_options
from buffer.keys import ShardKeys, shard_for
from buffer.scripts import Scripts
from buffer.values import LEASE_FIELDS, Entry, parse_entry, parse_leased


def require(name: str, value: int, minimum: int) -> None:
    """Bad arguments fail loudly with the parameter's name instead of reaching a script."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


class BufferCore:
    """Typed access to one buffer: ``prefix`` (KEY_PREFIX) and ``shards`` (SHARDS) fix the key space.

    The client must be made with ``CLIENT_OPTIONS`` (``decode_responses=True`` and ``surrogateescape``): every
    reply is parsed as ``str``, and a compressed snapshot must come back byte for byte.

    ``compress_min_bytes`` (SNAPSHOT_COMPRESS_MIN_BYTES): snapshots of at least that many bytes are stored
    compressed when that makes them smaller (``buffer.stored_snapshot``); 0 stores every snapshot as JSON.
    Either way every snapshot ever stored reads back.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str,
        shards: int,
        scripts: Scripts | None = None,
        accept_replicas: int = 0,
        accept_wait_ms: int = 0,
        compress_min_bytes: int = 0,
        breaker: Breaker | None = None,
    ) -> None:
        """``accept_replicas`` > 0: every accept waits (``WAIT``, at most ``accept_wait_ms``) for that many
        replicas to have it before it counts as accepted (``ACCEPT_DURABILITY=replica``)."""
        require("shards", shards, 1)
        require("accept_replicas", accept_replicas, 0)
        require("compress_min_bytes", compress_min_bytes, 0)
        if not uses_client_options(client):
            raise ValueError("the buffer's Redis client must be made with buffer.client.CLIENT_OPTIONS")
        self._compress_min_bytes = compress_min_bytes
        self._accept_replicas = accept_replicas
        self._accept_wait_ms = accept_wait_ms
        self._client = client
        self._breaker = breaker  # the client's, if it has one (``client_for``): read by ``unreachable_ms``
        self._scripts = scripts or Scripts.register(client)
        self.prefix = prefix
        self.shards = shards

    @classmethod
    def from_settings(cls, profile: Profile = "worker") -> Self:
        """A buffer on the process-wide ``profile`` client for ``buffer_redis_url()``, with the current MOLLIFIER
        settings. Web requests pass ``"request"`` (``client_for``)."""
        cfg = settings.MOLLIFIER
        client, scripts = client_for(buffer_redis_url(), profile, cfg)
        return cls(
            client, prefix=cfg.KEY_PREFIX, shards=cfg.SHARDS, scripts=scripts, breaker=breaker_of(client),
            accept_replicas=1 if cfg.ACCEPT_DURABILITY == "replica" else 0, accept_wait_ms=cfg.ACCEPT_WAIT_MS,
            compress_min_bytes=cfg.SNAPSHOT_COMPRESS_MIN_BYTES,
        )  # fmt: skip

    # -- keys ---------------------------------------------------------------------------------------------

    def shard_for(self, org_id: int) -> int:
        return shard_for(org_id, self.shards)

    def keys(self, shard: int) -> ShardKeys:
        if not 0 <= shard < self.shards:
            raise ValueError(f"shard must be in [0, {self.shards}), got {shard!r}")
        return ShardKeys(self.prefix, shard)

    def keys_for_org(self, org_id: int) -> ShardKeys:
        return ShardKeys(self.prefix, self.shard_for(org_id))

    def _checked_keys(self, shard: int, org_id: int) -> ShardKeys:
        """Keys of ``shard``, refusing an org from another shard (its keys would silently be wrong)."""
        if self.shard_for(org_id) != shard:
            raise ValueError(f"org {org_id} belongs to shard {self.shard_for(org_id)}, not shard {shard}")
        return self.keys(shard)

    # -- entries, read back (the trigger side's reads and the operators' pages) ------------------------------

    def get(self, run_id: str, *, org_id: int, snapshot: bool = True) -> Entry | None:
        """The entry in any state, or ``None``. The caller checks ``env_id`` for tenancy.

        ``snapshot=False`` leaves the snapshot out (``Entry.snapshot == ""``): a question about where a run
        is needs its status, not a document of up to ``MAX_PAYLOAD_BYTES``.
        """
        return self.get_many([run_id], org_id=org_id, snapshot=snapshot)[0]

    def get_many(self, run_ids: Sequence[str], *, org_id: int, snapshot: bool = True) -> list[Entry | None]:
        """``get`` for several runs of one org, in one round trip (a pipeline when there are several)."""
        k = self.keys_for_org(org_id)
        if snapshot and len(run_ids) == 1:
            return [parse_entry(run_ids[0], self._scripts.get(keys=[k.entry(run_ids[0]), k.snapshot(run_ids[0])]))]
        pipe = self._client.pipeline(transaction=False)
        for run_id in run_ids:
            if snapshot:
                self._scripts.get(keys=[k.entry(run_id), k.snapshot(run_id)], client=pipe)
            else:
                pipe.hmget(k.entry(run_id), LEASE_FIELDS[1:])
        replies = pipe.execute() if run_ids else []
        if snapshot:
            return [parse_entry(run_id, flat) for run_id, flat in zip(run_ids, replies, strict=True)]
        return [
            None if values[0] is None else parse_leased(run_id, [None, *values])
            for run_id, values in zip(run_ids, replies, strict=True)
        ]
