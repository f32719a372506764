"""The buffer: a thin typed wrapper over the Lua scripts in ``buffer/lua`` (docs/architecture.md#the-redis-buffer).

``Buffer`` is the only door to the buffer's Redis: its client is private, and no package outside
``buffer/`` imports redis (an import-linter contract, ``make lint``). Callers get typed methods for what
they need — the trigger side (accept, claims, the gate's counter, mutations), the drain (the round's
candidates, lease/ack/…, the outage circuit, the shard lock), the sweep (``buffer.sweep_state``) and the
gauges (``buffer.stats``) — and decide over the values they return.

All logic that must be atomic lives in the scripts; this module builds keys (through ``buffer.keys``),
checks arguments, calls one script and parses its reply into dataclasses. Time arrives as ``now_ms``.
Redis errors propagate as ``BufferUnavailable``: the trigger service decides to fail open, the drainer
to retry.

Entry life cycle (every transition keeps "env in ``org:<org>:envs`` iff its queue is non-empty, org in
``orgs`` iff it has such an env")::

    accept ─► QUEUED (q:<env>) ─lease─► LEASED (leases) ─ack─► ACKED (grace TTL, then gone)
                  ▲                        │ requeue / reclaim_expired
                  └──promote_due── QUEUED (retry) ◄┘        release ─► back to the queue head
    dead_letter (from any live state) ─► DEAD (dead, kept)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

import redis
from django.conf import settings
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from buffer import metrics, operators, stats, stored_snapshot, sweep_state
from buffer.breaker import Breaker, guarded_connection_class
from buffer.cluster import BufferCluster, primaries
from buffer.keys import ClaimKind, ShardKeys, shard_for
from buffer.operators import EnvCensus, ShardTop
from buffer.scripts import Scripts
from buffer.stats import ShardStats
from buffer.sweep_state import StuckScan, SweepCommit, SweepCycle
from mollifier_project.config import MollifierSettings, redis_location

log = logging.getLogger(__name__)

BufferUnavailable = redis.RedisError
"""Any failure to reach or use the buffer's Redis. An alias, so that callers outside ``buffer/`` can
catch it without importing redis."""


class NotReplicated(Exception):
    """``accept`` wrote the entry, but no replica confirmed it within the wait (``ACCEPT_DURABILITY=replica``).

    The entry stays in the primary and is drained as usual if the primary survives; the caller answers 503
    so that the client retries (the same request key then finds this run, so no second one is made)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"no replica confirmed the accept of run {run_id} in time")
        self.run_id = run_id


class EntryStatus(StrEnum):
    QUEUED = "QUEUED"  # in its env queue, or waiting out a retry backoff
    LEASED = "LEASED"  # popped by a drainer, lease deadline in ``leases``
    DEAD = "DEAD"  # dead-lettered, kept for operators
    ACKED = "ACKED"  # materialised; the hash lingers for the grace TTL


class AcceptStatus(StrEnum):
    ACCEPTED = "ACCEPTED"
    DUPLICATE = "DUPLICATE"  # the run id already has an entry (any state, incl. ACKED grace)
    IDEMPOTENT = "IDEMPOTENT"  # the idempotency key is bound to ``existing_run_id``
    FULL = "FULL"  # the env queue holds ``depth`` >= max_per_env entries; nothing written
    CLOSED = "CLOSED"  # an operator closed the env's intake; nothing written


class MutationStatus(StrEnum):
    QUEUED = "QUEUED"  # changed in the buffer; the drain writes it into the row
    LEASED = "LEASED"  # changed, but a drainer holds the entry: wait for the row and change that too
    DEAD = "DEAD"  # changed; the entry waits for an operator
    ACKED = "ACKED"  # already materialised: nothing changed, use Postgres
    NOT_FOUND = "NOT_FOUND"  # no entry, or another env's
    TOO_MANY = "TOO_MANY"  # append_tags only: ``count`` would exceed the cap; nothing changed
    CONFLICT = "CONFLICT"  # set_metadata only: another writer changed the version first; nothing changed


@dataclass(frozen=True, slots=True)
class NodeMemory:
    """``INFO memory`` of one master of the buffer's Redis."""

    node: str  # host:port
    used_bytes: int  # used_memory
    max_bytes: int  # maxmemory; 0 = no limit


@dataclass(frozen=True, slots=True)
class AckedClaim:
    """The task-level idempotency key of a run being acked (``Buffer.ack`` cuts its claim)."""

    run_id: str
    env_id: int
    task: str
    key: str


@dataclass(frozen=True, slots=True)
class IdemRef:
    """A task-level idempotency key to bind to the run atomically with its acceptance."""

    env_id: int
    task: str
    key: str
    ttl_ms: int


@dataclass(frozen=True, slots=True)
class AcceptResult:
    status: AcceptStatus
    existing_run_id: str | None = None  # IDEMPOTENT: the run holding the key
    depth: int | None = None  # ACCEPTED: queue length after the push; FULL: queue length


class TriggerStatus(StrEnum):
    """What ``lua/trigger.lua`` did; see its header for what each leaves written."""

    REQ_HELD = "REQ_HELD"  # the request key is another run's (``holder``); nothing written
    IDEM_HELD = "IDEM_HELD"  # the idempotency key is another run's (``holder``); the request key is ours
    PASS = "PASS"  # the gate passes it through; both keys are ours
    ACCEPTED = "ACCEPTED"  # parked, keys bound (``depth`` after the push)
    DUPLICATE = "DUPLICATE"  # the run id already has an entry (a retried call whose first one ran)
    CLOSED = "CLOSED"  # an operator closed the env's intake; no key written
    FULL = "FULL"  # the queue holds ``depth`` >= max_per_env entries; no key written
    IDEM_UNCLAIMED = "IDEM_UNCLAIMED"  # to be accepted, its idempotency key claimed by none; the request key is ours
    UNFENCED = "UNFENCED"  # the request key is not in Redis and the shard's fence is gone; nothing written


@dataclass(frozen=True, slots=True)
class RestoredKey:
    """A request key recorded in Postgres while Redis was unreachable, to put back into Redis."""

    org_id: int
    env_id: int
    task: str
    key: str
    run_id: str
    ttl_ms: int


@dataclass(frozen=True, slots=True)
class GateArgs:
    """The gate's part of ``Buffer.trigger``: count this trigger, and mollify it if tripped and ``enrolled``."""

    window_ms: int
    threshold: int
    hold_ms: int
    enrolled: bool


@dataclass(frozen=True, slots=True)
class TriggerReply:
    status: TriggerStatus
    holder: str | None = None  # REQ_HELD, IDEM_HELD
    depth: int | None = None  # ACCEPTED, FULL
    tripped: bool = False  # the gate's answer (False when not counted)
    count: int | None = None  # the gate's window count after this trigger; None when not counted


@dataclass(frozen=True, slots=True)
class AckResult:
    count: int  # entries that became ACKED
    cancelled: list[tuple[str, int, str | None]] = field(default_factory=list)  # (run id, cancelled_at ms, reason)
    tagged: list[tuple[str, list[str]]] = field(default_factory=list)  # (run id, every tag appended while buffered)


@dataclass(frozen=True, slots=True)
class MutationResult:
    status: MutationStatus
    cancelled_at_ms: int | None = None  # cancel: when the entry was (first) cancelled
    # append_tags, as engine.add_tags: how many tags were new; TOO_MANY: the count it would have reached.
    count: int | None = None
    total: int | None = None  # append_tags: distinct tags of the run after the append (or would-be)
    version: int | None = None  # set_metadata: the new version (CONFLICT: the current one)
    metadata: str | None = None  # set_metadata CONFLICT: the current metadata JSON ("" / None: the snapshot's)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One env a drain round may take from: its org, and how many entries wait in its queue."""

    org_id: int
    env_id: int
    depth: int


@dataclass(frozen=True, slots=True)
class RoundCandidates:
    """What ``Buffer.round_candidates`` found: one env per chosen org, in round order."""

    picks: list[Candidate]
    # Every org of the shard was chosen and none has a second queued env: ``picks`` is everything queued.
    covers_all: bool


@dataclass(frozen=True, slots=True)
class Switches:
    """An operator's switches of one shard."""

    paused_orgs: set[int]
    paused_envs: set[int]
    closed_envs: set[int]

    def paused(self, org_id: int, env_id: int) -> bool:
        return org_id in self.paused_orgs or env_id in self.paused_envs


@dataclass(frozen=True, slots=True)
class LeasedRound:
    """What ``Buffer.lease_round`` took, and which envs' queue heads wait to be leased on their own."""

    entries: list[Entry]
    solo_waiting: list[tuple[int, int]]  # (org, env)


@dataclass(frozen=True, slots=True)
class Entry:
    run_id: str
    env_id: int
    org_id: int
    status: EntryStatus
    snapshot: str
    attempts: int
    accepted_ms: int
    lease_until_ms: int | None = None
    cancelled_at_ms: int | None = None
    cancel_reason: str | None = None
    extra_tags: list[str] = field(default_factory=list)
    last_error: str | None = None
    materialised: bool = False
    # Overrides set while buffered (reschedule, metadata): hash fields, applied over the snapshot's values.
    delay_until_ms: int | None = None
    metadata: str | None = None  # JSON object
    metadata_version: int = 0
    # The run's created_at in epoch ms, as its Postgres row has it: set by ``Buffer.env_page`` (the index's
    # sort key); elsewhere None (the snapshot's ``created_ms`` says the same).
    created_ms: int | None = None
    # Why the stored snapshot could not be read back (a corrupt compressed value): then ``snapshot`` is "".
    snapshot_error: str | None = None

    @property
    def cancelled(self) -> bool:
        return self.cancelled_at_ms is not None


def _opt_int(value: str | None) -> int | None:
    return None if value is None or value == "" else int(value)


def _extra_tags(value: str | None) -> list[str]:
    """The ``extra_tags`` field: a JSON array written by append_tags (absent when none were added)."""
    if not value:
        return []
    decoded = json.loads(value)
    return [str(tag) for tag in decoded] if isinstance(decoded, list) else []


def _snapshot(stored: str | None) -> tuple[str, str | None]:
    """The snapshot JSON of a stored value, and why it is unreadable (``None``: it is readable).

    Never raises: an entry whose snapshot is corrupt must still come back (a drain round turns it into a
    failure row; an operator sees it), not take a whole lease reply down with it."""
    try:
        return stored_snapshot.unpack(stored), None
    except stored_snapshot.CorruptSnapshot as exc:
        return "", str(exc)


def parse_entry(run_id: str, flat: Sequence[str]) -> Entry | None:
    """An ``Entry`` from a flat HGETALL reply; ``None`` for an empty reply (no such entry)."""
    if not flat:
        return None
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    snapshot, snapshot_error = _snapshot(fields.get("snapshot"))
    return Entry(
        run_id=run_id,
        env_id=int(fields["env"]),
        org_id=int(fields["org"]),
        status=EntryStatus(fields["status"]),
        snapshot=snapshot,
        attempts=int(fields.get("attempts", 0)),
        accepted_ms=int(fields.get("accepted_ms", 0)),
        lease_until_ms=_opt_int(fields.get("lease_until_ms")),
        cancelled_at_ms=_opt_int(fields.get("cancelled_at")),
        cancel_reason=fields.get("cancel_reason"),
        extra_tags=_extra_tags(fields.get("extra_tags")),
        last_error=fields.get("last_error"),
        materialised=fields.get("materialised") == "1",
        delay_until_ms=_opt_int(fields.get("delay_until_ms")),
        metadata=fields.get("metadata") or None,
        metadata_version=int(fields.get("metadata_version") or 0),
        snapshot_error=snapshot_error,
    )


# The values ``lua/lease.lua`` returns per entry, in its order (its header lists the same names).
LEASE_FIELDS = (
    "snapshot", "env", "org", "status", "attempts", "accepted_ms", "lease_until_ms", "cancelled_at",
    "cancel_reason", "extra_tags", "last_error", "materialised", "delay_until_ms", "metadata",
    "metadata_version",
)  # fmt: skip


def parse_leased(run_id: str, values: Sequence[str | None]) -> Entry:
    """An ``Entry`` from one entry of a ``lease`` reply: values by position (``LEASE_FIELDS``), absent = None."""
    (snapshot, env, org, status, attempts, accepted, lease_until, cancelled, reason, extra, error, done,
     delay_until, metadata, version) = values  # fmt: skip
    assert env is not None and org is not None and status is not None, f"entry {run_id} lacks env, org or status"
    text, snapshot_error = _snapshot(snapshot)
    return Entry(
        run_id, int(env), int(org), _STATUSES.get(status) or EntryStatus(status), text, int(attempts or 0), int(accepted or 0),
        _opt_int(lease_until), _opt_int(cancelled), reason, _extra_tags(extra), error, done == "1",
        _opt_int(delay_until), metadata or None, int(version or 0), snapshot_error=snapshot_error,
    )  # fmt: skip


_STATUSES = {status.value: status for status in EntryStatus}  # a dict lookup per leased row, not Enum's __call__


def _lua_number(value: int | float) -> str:
    """A JSON number as Lua's ``tostring`` writes it (append_tags deduped snapshot tags in Lua, with cjson's
    doubles): ``%.14g``, so 7 is "7" and 1.5 is "1.5"."""
    return f"{float(value):.14g}"


def _require(name: str, value: int, minimum: int) -> None:
    """Bad arguments fail loudly with the parameter's name instead of reaching a script."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


CLIENT_OPTIONS: dict[str, Any] = {"decode_responses": True, "encoding_errors": "surrogateescape"}
"""What every client of the buffer needs: ``str`` replies, and compressed snapshots (binary) that survive
the decoding — an undecodable byte becomes a lone surrogate, which ``buffer.stored_snapshot`` turns back into
that byte. Valid UTF-8, i.e. everything else the buffer stores, decodes as usual."""


def uses_client_options(client: redis.Redis) -> bool:
    """Whether ``client`` decodes replies as ``CLIENT_OPTIONS`` says (a single server or a cluster)."""
    encoder = client.get_encoder()
    return bool(encoder.decode_responses) and encoder.encoding_errors == CLIENT_OPTIONS["encoding_errors"]


Profile = Literal["request", "operator", "worker"]
"""Whose calls a client carries (docs/operations.md#redis-timeouts-and-the-circuit-breaker): ``request`` — an API
request's (short timeouts, no retry, a circuit breaker); ``operator`` — the admin's pages and actions (scans of
every shard: a longer timeout, no retry, a breaker of its own); ``worker`` — the drain's and the sweep's (a
longer timeout, one quick retry, no breaker: the drain has its own outage circuit)."""

_clients: dict[tuple[str, Profile, tuple[int, ...]], tuple[redis.Redis, Scripts]] = {}
_clients_lock = threading.Lock()


def buffer_redis_url() -> str:
    """The buffer's Redis: ``BUFFER_REDIS_URL``, else ``REDIS_URL`` (read at call time, so a test that points
    ``settings.REDIS_URL`` at a server of its own moves the buffer with it)."""
    return settings.BUFFER_REDIS_URL or settings.REDIS_URL


def _idem_key(k: ShardKeys, env_id: int, idempotency: IdemRef) -> str:
    """The idempotency key's name, after checking the reference belongs to ``env_id`` (accept and trigger)."""
    if idempotency.env_id != env_id:
        raise ValueError(f"idempotency.env_id {idempotency.env_id} differs from env_id {env_id}")
    _require("idempotency.ttl_ms", idempotency.ttl_ms, 1)
    return k.idem(env_id, idempotency.task, idempotency.key)


def breaker_of(client: redis.Redis) -> Breaker | None:
    """The circuit breaker in ``client``'s connections (request and operator clients of ``client_for``), else None."""
    found = getattr(client, "mollifier_breaker", None)
    return found if isinstance(found, Breaker) else None


def client_for(
    url: str, profile: Profile = "worker", cfg: MollifierSettings | None = None
) -> tuple[redis.Redis, Scripts]:
    """The process-wide client of ``profile`` for ``url`` (str replies) and its registered scripts; a
    ``BufferCluster`` for a ``redis+cluster://`` URL (``buffer.cluster``). ``cfg``: the MOLLIFIER settings
    (default: the current ones), whose timeouts and breaker shape the client.

    ``request``: connect and reply timeout ``REDIS_REQUEST_TIMEOUT_MS`` (plus ``ACCEPT_WAIT_MS`` when accepts
    wait for a replica), no retry, and a circuit breaker (``buffer.breaker``) in its connections — a hung Redis
    costs a web request a fraction of a second, then nothing while the breaker is open. ``operator``: the same
    with reply timeout ``REDIS_OPERATOR_TIMEOUT_MS`` and a breaker of its own. ``worker``: reply
    timeout ``REDIS_WORKER_TIMEOUT_MS``, connect timeout 1 s and one quick retry (redis-py's default retries
    three times with up to seconds of backoff). A retried ``accept`` whose first attempt did run answers
    DUPLICATE for its own run id: that means "accepted".
    """
    cfg = cfg or settings.MOLLIFIER
    trips = (cfg.REDIS_BREAKER_FAILURES, cfg.REDIS_BREAKER_OPEN_MS)
    if profile == "request":
        wait_ms = cfg.ACCEPT_WAIT_MS if cfg.ACCEPT_DURABILITY == "replica" else 0
        shape: tuple[int, ...] = (cfg.REDIS_REQUEST_TIMEOUT_MS + wait_ms, *trips)
    elif profile == "operator":
        shape = (cfg.REDIS_OPERATOR_TIMEOUT_MS, *trips)
    else:
        shape = (cfg.REDIS_WORKER_TIMEOUT_MS,)
    with _clients_lock:
        cache_key = (url, profile, shape)
        if cache_key not in _clients:
            location = redis_location(url)
            options: dict[str, Any] = dict(CLIENT_OPTIONS, health_check_interval=30)
            breaker: Breaker | None = None
            if profile != "worker":
                timeout_s = shape[0] / 1000
                breaker = Breaker(failures=shape[1], open_ms=shape[2])
                options.update(
                    socket_connect_timeout=min(timeout_s, cfg.REDIS_REQUEST_TIMEOUT_MS / 1000), socket_timeout=timeout_s,
                    retry=Retry(NoBackoff(), retries=0), connection_class=guarded_connection_class(location.url, breaker),
                )  # fmt: skip
            else:
                options.update(
                    socket_connect_timeout=1.0, socket_timeout=shape[0] / 1000,
                    retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), retries=1),
                )  # fmt: skip
            client: redis.Redis = (
                BufferCluster.from_url(location.url, **options)  # type: ignore[assignment]  # same command API
                if location.cluster
                else redis.Redis.from_url(location.url, **options)
            )
            client.mollifier_breaker = breaker  # type: ignore[attr-defined]  # read by breaker_of
            _clients[cache_key] = (client, Scripts.register(client))
        return _clients[cache_key]


class Buffer:
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
        _require("shards", shards, 1)
        _require("accept_replicas", accept_replicas, 0)
        _require("compress_min_bytes", compress_min_bytes, 0)
        if not uses_client_options(client):
            raise ValueError("the buffer's Redis client must be made with buffer.buffer.CLIENT_OPTIONS")
        self._compress_min_bytes = compress_min_bytes
        self._accept_replicas = accept_replicas
        self._accept_wait_ms = accept_wait_ms
        self._client = client
        self._breaker = breaker  # the client's, if it has one (``client_for``): read by ``unreachable_ms``
        self._scripts = scripts or Scripts.register(client)
        self.prefix = prefix
        self.shards = shards

    @classmethod
    def from_settings(cls, profile: Profile = "worker") -> Buffer:
        """A buffer on the process-wide ``profile`` client for ``buffer_redis_url()``, with the current MOLLIFIER
        settings. Web requests pass ``"request"`` (``client_for``)."""
        cfg = settings.MOLLIFIER
        client, scripts = client_for(buffer_redis_url(), profile, cfg)
        return cls(
            client, prefix=cfg.KEY_PREFIX, shards=cfg.SHARDS, scripts=scripts, breaker=breaker_of(client),
            accept_replicas=1 if cfg.ACCEPT_DURABILITY == "replica" else 0, accept_wait_ms=cfg.ACCEPT_WAIT_MS,
            compress_min_bytes=cfg.SNAPSHOT_COMPRESS_MIN_BYTES,
        )  # fmt: skip

    def _stored(self, snapshot: str, now_ms: int) -> tuple[str | bytes, str]:
        """What accept and trigger send for ``snapshot``: its stored form, and its created_ms (the env index
        position, read here because no script reads a snapshot; ``now_ms`` if it has none)."""
        return stored_snapshot.pack(snapshot, min_bytes=self._compress_min_bytes), stored_snapshot.created_ms(
            snapshot, now_ms
        )

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

    # -- trigger side ---------------------------------------------------------------------------------------

    def accept(
        self,
        *,
        run_id: str,
        env_id: int,
        org_id: int,
        snapshot: str,
        now_ms: int,
        idempotency: IdemRef | None,
        max_per_env: int,
    ) -> AcceptResult:
        """Park a snapshot; see ``lua/accept.lua``. Counted in ``mollifier_accepted_total{result}``.

        With ``accept_replicas`` the script and a ``WAIT`` share one connection (a pipeline: WAIT counts the
        replicas that have this connection's writes); an accept no replica confirmed raises ``NotReplicated``.
        """
        _require("max_per_env", max_per_env, 0)
        if not isinstance(snapshot, str) or not snapshot:
            raise ValueError("snapshot must be a non-empty JSON string")
        k = self.keys_for_org(org_id)
        keys = [k.entry(run_id), k.queue(env_id), k.org_envs(org_id), k.orgs, k.closed_envs]
        stored, created_ms = self._stored(snapshot, now_ms)
        args: list[str | bytes | int] = [run_id, env_id, org_id, stored, now_ms, max_per_env, "", k.base, created_ms]
        if idempotency is not None:
            keys.append(_idem_key(k, env_id, idempotency))
            args[6] = idempotency.ttl_ms
        if self._accept_replicas:
            pipe = self._client.pipeline(transaction=False)
            self._scripts.accept(keys=keys, args=args, client=pipe)
            pipe.execute_command("WAIT", self._accept_replicas, self._accept_wait_ms)
            (status, value), replicas = pipe.execute()
        else:
            status, value = self._scripts.accept(keys=keys, args=args)
            replicas = None
        result = _accept_result(AcceptStatus(status), value)
        metrics.ACCEPTED.labels(result=result.status.value.lower()).inc()
        if result.status is AcceptStatus.ACCEPTED and replicas is not None and replicas < self._accept_replicas:
            raise NotReplicated(run_id)
        return result

    def trigger(
        self,
        *,
        run_id: str,
        env_id: int,
        org_id: int,
        task: str,
        now_ms: int,
        request_key: str | None,
        request_ttl_ms: int,
        idempotency: IdemRef | None,
        gate: GateArgs | None,
        snapshot: str,
        max_per_env: int,
        idem_pass_ttl_ms: int | None = None,
        check_unclaimed: bool = False,
        request_fence_ms: int = 0,
    ) -> TriggerReply:
        """A trigger's Redis steps in one round trip (``lua/trigger.lua``): request key, idempotency claim,
        gate (``gate`` None: not counted, pass through) and accept.

        The idempotency claim of a passed-through trigger lasts ``idem_pass_ttl_ms`` (None: the key is only
        checked, never written); ``check_unclaimed`` stops an accept whose key nobody claims
        (``IDEM_UNCLAIMED``: Postgres may hold it, docs/architecture.md#idempotency). ``snapshot`` is needed only when the
        call can accept (``gate.enrolled``); pass ``""`` otherwise, so a passed-through trigger does not
        ship its payload to Redis. Accepts are counted in ``mollifier_accepted_total{result}``.

        With ``accept_replicas``, a call that can accept carries a ``WAIT`` in the same pipeline (one
        round trip; WAIT counts this connection's writes) and an unconfirmed accept raises
        ``NotReplicated``. A call that cannot accept never waits.

        ``request_fence_ms`` > 0 (with ``request_key``): a request key Redis does not hold counts as new only
        while the shard's fence exists (refreshed for that long); without it the reply is UNFENCED and nothing
        is written (``restore_request_keys``, docs/api.md#request-idempotency).
        """
        _require("max_per_env", max_per_env, 0)
        _require("request_ttl_ms", request_ttl_ms, 1)
        can_accept = gate is not None and gate.enrolled
        if can_accept and (not isinstance(snapshot, str) or not snapshot):
            raise ValueError("snapshot must be a non-empty JSON string when the trigger can be accepted")
        k = self.keys_for_org(org_id)
        keys = [
            k.entry(run_id), k.queue(env_id), k.org_envs(org_id), k.orgs, k.closed_envs, k.rate(env_id),
            k.tripped(env_id),
        ]  # fmt: skip
        stored, created_ms = self._stored(snapshot, now_ms) if can_accept else ("", "")
        args: list[str | bytes | int] = [
            run_id, env_id, org_id, stored, now_ms, max_per_env, k.base, "skip", 0, 0, 0,
            "1" if can_accept else "0", "", "", created_ms, "", "1" if check_unclaimed else "0",
        ]  # fmt: skip
        if gate is not None:
            _require("window_ms", gate.window_ms, 1)
            _require("threshold", gate.threshold, 0)
            _require("hold_ms", gate.hold_ms, 0)
            args[7:11] = ["count", gate.window_ms, gate.threshold, gate.hold_ms]
        if request_key:
            keys.append(k.req(env_id, task, request_key))
            args[12] = request_ttl_ms
        if idempotency is not None:
            keys.append(_idem_key(k, env_id, idempotency))
            args[13] = idempotency.ttl_ms
            if idem_pass_ttl_ms is not None:
                _require("idem_pass_ttl_ms", idem_pass_ttl_ms, 1)
                args[15] = idem_pass_ttl_ms
        if request_key and request_fence_ms > 0:
            keys.append(k.req_fence)
            args.append(request_fence_ms)
        replicas = None
        if self._accept_replicas and can_accept:
            pipe = self._client.pipeline(transaction=False)
            self._scripts.trigger(keys=keys, args=args, client=pipe)
            pipe.execute_command("WAIT", self._accept_replicas, self._accept_wait_ms)
            (status, value, count), replicas = pipe.execute()
        else:
            status, value, count = self._scripts.trigger(keys=keys, args=args)
        reply = _trigger_reply(TriggerStatus(status), value, int(count))
        if reply.status in _ACCEPT_OUTCOMES:
            metrics.ACCEPTED.labels(result=reply.status.value.lower()).inc()
        if reply.status is TriggerStatus.ACCEPTED and replicas is not None and replicas < self._accept_replicas:
            raise NotReplicated(run_id)
        return reply

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

    def cancel(self, run_id: str, *, org_id: int, env_id: int, now_ms: int, reason: str) -> MutationResult:
        """Flag a buffered run cancelled (idempotent: the first cancelled_at stays); see ``lua/cancel.lua``."""
        status, cancelled_at = self._scripts.cancel(
            keys=[self.keys_for_org(org_id).entry(run_id)], args=[env_id, now_ms, reason]
        )
        return MutationResult(MutationStatus(status), cancelled_at_ms=_opt_int(cancelled_at))

    def append_tags(self, run_id: str, *, org_id: int, env_id: int, tags: list[str], max_tags: int) -> MutationResult:
        """Add deduplicated tags as a hash field; TOO_MANY (nothing written) past ``max_tags``.

        ``count`` follows ``engine.add_tags``: the number of new tags, or for TOO_MANY the would-be total.
        """
        _require("max_tags", max_tags, 0)
        if isinstance(tags, str) or not all(isinstance(tag, str) for tag in tags):
            raise ValueError("tags must be a list of strings")
        k = self.keys_for_org(org_id)
        own = self._snapshot_tags(k, run_id)
        status, total, added = self._scripts.append_tags(
            keys=[k.entry(run_id)], args=[env_id, max_tags, -1 if own is None else len(own), *(own or ()), *tags]
        )
        status = MutationStatus(status)
        count = int(total) if status is MutationStatus.TOO_MANY else int(added)
        return MutationResult(status, count=count, total=int(total))

    def _snapshot_tags(self, k: ShardKeys, run_id: str) -> list[str] | None:
        """The tags of the run's stored snapshot, for ``append_tags`` to dedupe against; ``[]`` when there is
        no snapshot (the script then answers NOT_FOUND), ``None`` when it is not a readable JSON object.

        Read before the script, in Python, because a stored snapshot may be compressed. Correct without a
        lock: a snapshot is written once, at accept, and never changed. The rules are the ones the script
        applied with cjson: "tags" absent, a list, a string, or an object (its values); a number counts as
        its text; anything else is skipped."""
        pipe = self._client.pipeline(transaction=False)
        pipe.get(k.snapshot(run_id))
        pipe.hget(k.entry(run_id), "snapshot")  # an entry written before s:<run>
        stored, legacy = pipe.execute()
        if stored is None and legacy is None:
            return []
        text, error = _snapshot(stored if stored is not None else legacy)
        try:
            doc = json.loads(text) if error is None else None
        except (ValueError, RecursionError):
            doc = None
        if not isinstance(doc, dict):
            return None
        value = doc.get("tags")
        values = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
        return [
            tag if isinstance(tag, str) else _lua_number(tag)
            for tag in values
            if isinstance(tag, str) or (isinstance(tag, int | float) and not isinstance(tag, bool))
        ]

    # -- reschedule and metadata of buffered runs (docs/architecture.md#reads-and-mutations-of-buffered-runs) --

    def reschedule(self, run_id: str, *, org_id: int, env_id: int, delay_until_ms: int) -> MutationResult:
        """Set a buffered run's new delay (a hash field over the snapshot's); see ``lua/reschedule.lua``.
        LEASED means nothing was written: the caller waits for the row."""
        _require("delay_until_ms", delay_until_ms, 0)
        (status,) = self._scripts.reschedule(
            keys=[self.keys_for_org(org_id).entry(run_id)], args=[env_id, delay_until_ms]
        )
        return MutationResult(MutationStatus(status))

    def set_metadata(
        self, run_id: str, *, org_id: int, env_id: int, metadata_json: str, expected_version: int
    ) -> MutationResult:
        """Replace a buffered run's metadata if its version is still ``expected_version``; see
        ``lua/set_metadata.lua``. CONFLICT carries the current version and metadata for the retry."""
        _require("expected_version", expected_version, 0)
        if not isinstance(metadata_json, str) or not metadata_json.startswith("{"):
            raise ValueError("metadata_json must be a JSON object")
        status, version, current = self._scripts.set_metadata(
            keys=[self.keys_for_org(org_id).entry(run_id)], args=[env_id, expected_version, metadata_json]
        )
        return MutationResult(MutationStatus(status), version=int(version), metadata=current or None)

    def claim(
        self,
        kind: ClaimKind,
        *,
        org_id: int,
        env_id: int,
        task: str,
        key: str,
        run_id: str,
        ttl_ms: int,
        stale_run_id: str | None = None,
    ) -> str | None:
        """Bind an idempotency key (``"idem"``) or request key (``"req"``) to ``run_id``.

        Returns ``None`` when ``run_id`` now holds it (it was free, already ours, or held by
        ``stale_run_id``), else the holder's run id — a normal outcome, not an error.
        """
        _require("ttl_ms", ttl_ms, 1)
        key_name = self.keys_for_org(org_id).claim(kind, env_id, task, key)
        holder = self._scripts.claim(keys=[key_name], args=[run_id, ttl_ms, stale_run_id or ""])
        return holder or None

    def release_claim(self, kind: ClaimKind, *, org_id: int, env_id: int, task: str, key: str, run_id: str) -> bool:
        """Delete the key only if ``run_id`` holds it; ``True`` if it did."""
        key_name = self.keys_for_org(org_id).claim(kind, env_id, task, key)
        return self._scripts.release_claim(keys=[key_name], args=[run_id]) == 1

    def restore_request_keys(self, restored: Sequence[RestoredKey], *, fence_org_id: int | None, fence_ms: int) -> None:
        """Put request keys recorded in Postgres during a Redis outage back (``SET NX``: a key Redis holds keeps
        its run), then raise the fence of ``fence_org_id``'s shard for ``fence_ms`` (None: not yet, more keys
        wait). One pipeline; on a cluster each shard's keys and fence go to their own master, in this order."""
        _require("fence_ms", fence_ms, 1)
        pipe = self._client.pipeline(transaction=False)
        for r in restored:
            pipe.set(self.keys_for_org(r.org_id).req(r.env_id, r.task, r.key), r.run_id, nx=True, px=max(1, r.ttl_ms))
        if fence_org_id is not None:
            pipe.set(self.keys_for_org(fence_org_id).req_fence, "1", px=fence_ms)
        if restored or fence_org_id is not None:
            pipe.execute()

    def drop_request_fence(self, *, org_id: int) -> None:
        """Delete the request-key fence of the org's shard: the next keyed trigger there restores from Postgres
        first. DEL is allowed on a full Redis (``maxmemory``), so this works when a write was refused."""
        self._client.delete(self.keys_for_org(org_id).req_fence)

    def unreachable_ms(self) -> int | None:
        """How long this process' request-path calls have failed without a single answer (``buffer.breaker``),
        or None: the last call was answered, or this client has no breaker."""
        return self._breaker.failing_for_ms() if self._breaker is not None else None

    def reset_claim(self, kind: ClaimKind, *, org_id: int, env_id: int, task: str, key: str) -> bool:
        """Delete the key whoever holds it (an operator or API reset of an idempotency key). ``True`` if it existed."""
        return self._client.delete(self.keys_for_org(org_id).claim(kind, env_id, task, key)) == 1

    def trip(
        self, *, org_id: int, env_id: int, now_ms: int, window_ms: int, threshold: int, hold_ms: int
    ) -> tuple[bool, int]:
        """Count one trigger in the env's fixed window; ``(tripped, count in this window)``."""
        _require("window_ms", window_ms, 1)
        _require("threshold", threshold, 0)
        _require("hold_ms", hold_ms, 0)
        k = self.keys_for_org(org_id)
        tripped, count = self._scripts.trip(
            keys=[k.rate(env_id), k.tripped(env_id), k.closed_envs],
            args=[now_ms, window_ms, threshold, hold_ms, env_id],
        )
        return tripped == 1, int(count)

    # -- drain side -------------------------------------------------------------------------------------------

    def lease(self, shard: int, *, org_id: int, env_id: int, n: int, now_ms: int, lease_ms: int) -> list[Entry]:
        """Pop up to ``n`` entries of one env, FIFO, as LEASED until ``now_ms + lease_ms``."""
        _require("n", n, 1)
        _require("lease_ms", lease_ms, 1)
        return self.lease_many(shard, [(org_id, env_id, n)], now_ms=now_ms, lease_ms=lease_ms)

    def lease_many(
        self, shard: int, picks: Sequence[tuple[int, int, int]], *, now_ms: int, lease_ms: int
    ) -> list[Entry]:
        """``lease`` for several ``(org, env, n)`` of one shard in one pipelined round trip (each lease is
        still its own atomic script call). Entries in pick order, FIFO within an env; no byte budget and no
        stop at solo entries (the drain uses ``lease_round``)."""
        return self._lease(shard, picks, now_ms=now_ms, lease_ms=lease_ms, max_bytes=0, mode="all").entries

    def lease_round(
        self, shard: int, picks: Sequence[tuple[int, int, int]], *, now_ms: int, lease_ms: int, max_bytes: int
    ) -> LeasedRound:
        """A drain round's leases: up to ``n`` entries of each ``(org, env, n)``, each env's snapshots at
        most ``max_bytes`` (0: no limit; always at least one entry), stopping before an entry marked solo.
        One pipelined round trip. Returns the entries, and the picks whose queue head waits to be leased
        alone (``lease_solo``)."""
        return self._lease(shard, picks, now_ms=now_ms, lease_ms=lease_ms, max_bytes=max_bytes, mode="round")

    def _lease(
        self, shard: int, picks: Sequence[tuple[int, int, int]], *, now_ms: int, lease_ms: int, max_bytes: int,
        mode: str,
    ) -> LeasedRound:  # fmt: skip
        _require("lease_ms", lease_ms, 1)
        _require("max_bytes", max_bytes, 0)
        if not picks:
            return LeasedRound([], [])
        calls: list[tuple[list[str], list[str | int]]] = []
        for org_id, env_id, n in picks:
            _require("n", n, 1)
            k = self._checked_keys(shard, org_id)
            calls.append(
                (
                    [k.queue(env_id), k.org_envs(org_id), k.orgs, k.leases],
                    [k.base, env_id, org_id, n, now_ms, lease_ms, max_bytes, mode],
                )
            )
        if len(calls) == 1:
            replies = [self._scripts.lease(keys=calls[0][0], args=calls[0][1])]
        else:
            pipe = self._client.pipeline(transaction=False)
            for keys, args in calls:
                self._scripts.lease(keys=keys, args=args, client=pipe)
            replies = pipe.execute()
        entries = [
            parse_leased(run_id, values)
            for flat in replies
            for run_id, values in zip(flat[1::2], flat[2::2], strict=True)
        ]
        solo = [(org_id, env_id) for (org_id, env_id, _), flat in zip(picks, replies, strict=True) if flat[0] == 1]
        return LeasedRound(entries, solo)

    def lease_solo(self, shard: int, *, org_id: int, env_id: int, now_ms: int, lease_ms: int) -> Entry | None:
        """Lease the env's queue head alone, solo-marked or not (``None``: the queue is empty)."""
        _require("lease_ms", lease_ms, 1)
        k = self._checked_keys(shard, org_id)
        flat = self._scripts.lease(
            keys=[k.queue(env_id), k.org_envs(org_id), k.orgs, k.leases],
            args=[k.base, env_id, org_id, 1, now_ms, lease_ms, 0, "solo"],
        )
        return parse_leased(flat[1], flat[2]) if len(flat) > 1 else None

    def ack(
        self, shard: int, run_ids: Sequence[str], *, now_ms: int, grace_ms: int, claims: Sequence[AckedClaim] = ()
    ) -> AckResult:
        """Rows committed: entries become ACKED with a ``grace_ms`` TTL. Returns how many changed, which of
        them carry a cancel flag (their rows must be cancelled: the flag came too late) and which carry
        appended tags (the rows must have them: they may have come too late too).

        ``claims``: the idempotency keys of acked runs; each claim still held by its run is cut to
        ``grace_ms`` in the same script — its row answers for the key from now on (``lua/ack.lua``)."""
        _require("grace_ms", grace_ms, 0)
        if not run_ids:
            return AckResult(0)
        k = self.keys(shard)
        claim_keys = [k.idem(c.env_id, c.task, c.key) for c in claims]
        reply = self._scripts.ack(
            keys=[k.leases, k.retry, k.dead, k.orgs, *claim_keys],
            args=[k.base, now_ms, grace_ms, len(run_ids), *run_ids, *(c.run_id for c in claims)],
        )
        groups = [reply[i : i + 4] for i in range(1, len(reply), 4)]
        cancelled = [(run, int(at), reason or None) for run, at, reason, _ in groups if at]
        tagged = [(run, _extra_tags(tags)) for run, _, _, tags in groups if tags]
        return AckResult(int(reply[0]), cancelled, tagged)

    def requeue(
        self, shard: int, run_id: str, *, now_ms: int, delay_ms: int, error: str, to_tail: bool = False
    ) -> int | None:
        """A retryable failure: attempts + 1, wait in ``retry`` until ``now_ms + delay_ms``, then back to the
        head of its queue — or, ``to_tail``, to its tail (a write that timed out must not hold up the rest).

        Returns the new attempts count, or ``None`` if the run was no longer leased (nothing changed).
        """
        _require("delay_ms", delay_ms, 0)
        k = self.keys(shard)
        args: list[str | int] = [k.base, run_id, now_ms, delay_ms, error, *(["tail"] if to_tail else [])]
        attempts = self._scripts.requeue(keys=[k.leases, k.retry], args=args)
        return None if attempts < 0 else attempts

    def promote_due(self, shard: int, *, now_ms: int, limit: int) -> int:
        """Move up to ``limit`` due retries to the head of their queues (those requeued ``to_tail``: to the
        tail). Returns how many moved."""
        _require("limit", limit, 1)
        k = self.keys(shard)
        return self._scripts.promote_due(keys=[k.retry, k.orgs], args=[k.base, now_ms, limit])

    def reclaim_expired(self, shard: int, *, now_ms: int, limit: int) -> list[tuple[str, int]]:
        """Expired leases (deadline <= now_ms) → retry, due now, attempts + 1. Returns (run id, attempts)."""
        _require("limit", limit, 1)
        k = self.keys(shard)
        flat = self._scripts.reclaim_expired(keys=[k.leases, k.retry], args=[k.base, now_ms, limit])
        return [(run_id, int(attempts)) for run_id, attempts in zip(flat[::2], flat[1::2], strict=True)]

    def release(self, shard: int, run_ids: Sequence[str]) -> int:
        """Leased entries back to their queue heads in the given order, attempts unchanged (Postgres down)."""
        if not run_ids:
            return 0
        k = self.keys(shard)
        return self._scripts.release(keys=[k.leases, k.orgs], args=[k.base, *run_ids])

    def dead_letter(self, shard: int, run_id: str, *, now_ms: int, reason: str) -> bool:
        """Park an entry as DEAD for operators (kept, no TTL). ``False`` if missing, DEAD or ACKED."""
        k = self.keys(shard)
        return (
            self._scripts.dead_letter(keys=[k.leases, k.retry, k.dead, k.orgs], args=[k.base, run_id, now_ms, reason])
            == 1
        )

    def redrive(
        self, shard: int, *, now_ms: int, limit: int, env_id: int | None = None, run_ids: Sequence[str] = ()
    ) -> tuple[int, int]:
        """Dead letters back to their queue heads with attempts reset (``lua/redrive.lua``): the given
        ``run_ids``, else up to ``limit`` of the shard's longest-dead (of ``env_id`` only, if given).
        Returns ``(redriven, skipped)``; skipped ids were not DEAD any more."""
        _require("limit", limit, 1)
        k = self.keys(shard)
        redriven, skipped = self._scripts.redrive(
            keys=[k.dead, k.orgs], args=[k.base, now_ms, limit, "" if env_id is None else env_id, *run_ids]
        )
        return int(redriven), int(skipped)

    def take(self, shard: int, run_ids: Sequence[str], *, now_ms: int, lease_ms: int) -> list[Entry]:
        """Lease these entries wherever they wait (queue, retry, dead, an expired lease) for an operator's
        repair (``lua/take.lua``); one leased by a live drainer, acked or missing is not returned."""
        _require("lease_ms", lease_ms, 1)
        if not run_ids:
            return []
        k = self.keys(shard)
        flat = self._scripts.take(keys=[k.leases, k.retry, k.dead, k.orgs], args=[k.base, now_ms, lease_ms, *run_ids])
        return [parse_leased(run_id, values) for run_id, values in zip(flat[::2], flat[1::2], strict=True)]

    def requeue_now(self, shard: int, run_ids: Sequence[str], *, now_ms: int) -> tuple[int, int]:
        """Retrying entries, dead letters and expired leases to their queue heads now (``lua/requeue_now.lua``).
        Returns ``(requeued, skipped)``."""
        if not run_ids:
            return 0, 0
        k = self.keys(shard)
        requeued, skipped = self._scripts.requeue_now(
            keys=[k.leases, k.retry, k.dead, k.orgs], args=[k.base, now_ms, *run_ids]
        )
        return int(requeued), int(skipped)

    def round_candidates(self, shard: int, *, max_orgs: int) -> RoundCandidates:
        """The next round's envs — up to ``max_orgs`` orgs after the org cursor, one env each after its env
        cursor, with their depths — in one script call that also advances the cursors (``lua/candidates.lua``)."""
        _require("max_orgs", max_orgs, 1)
        k = self.keys(shard)
        flat = self._scripts.candidates(
            keys=[k.orgs, k.cursor_orgs, k.cursor_envs, k.paused_orgs, k.paused_envs], args=[k.base, max_orgs]
        )
        picks = [Candidate(int(flat[i]), int(flat[i + 1]), int(flat[i + 2])) for i in range(1, len(flat), 3)]
        return RoundCandidates(picks, covers_all=flat[0] == 1)

    # -- operators' switches --------------------------------------------------------------------------------

    def pause(self, *, org_id: int, env_id: int | None = None) -> bool:
        """Stop draining an org (``env_id=None``) or one of its envs; entries keep being accepted and counted,
        and a paused env's entries do not count as stale. ``True`` if it was not paused already."""
        k = self.keys_for_org(org_id)
        if env_id is None:
            return self._client.sadd(k.paused_orgs, org_id) == 1
        return self._client.sadd(k.paused_envs, env_id) == 1

    def resume(self, *, org_id: int, env_id: int | None = None) -> bool:
        """Undo ``pause``. ``True`` if it was paused."""
        k = self.keys_for_org(org_id)
        if env_id is None:
            return self._client.srem(k.paused_orgs, org_id) == 1
        return self._client.srem(k.paused_envs, env_id) == 1

    def close_intake(self, *, org_id: int, env_id: int) -> bool:
        """Refuse the env's triggers (429) until ``open_intake``. ``True`` if it was open."""
        return self._client.sadd(self.keys_for_org(org_id).closed_envs, env_id) == 1

    def open_intake(self, *, org_id: int, env_id: int) -> bool:
        return self._client.srem(self.keys_for_org(org_id).closed_envs, env_id) == 1

    def switches(self, shard: int) -> Switches:
        """The shard's paused orgs and envs and closed envs, in one round trip."""
        k = self.keys(shard)
        pipe = self._client.pipeline(transaction=False)
        pipe.smembers(k.paused_orgs)
        pipe.smembers(k.paused_envs)
        pipe.smembers(k.closed_envs)
        orgs, envs, closed = pipe.execute()
        return Switches({int(o) for o in orgs}, {int(e) for e in envs}, {int(e) for e in closed})

    def server_time_ms(self) -> int:
        """Redis's clock (``TIME``) in epoch ms: the one clock every drainer shares, so a worker whose own
        clock runs ahead cannot reclaim another's live leases."""
        seconds, micros = self._client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    def epochs(self, candidate: str) -> list[tuple[str, bool]]:
        """Every shard's buffer epoch, in shard order, as ``(epoch, started)``: ``candidate`` is written to each
        shard that has none and ``started`` says so (``lua/epoch.lua``). One pipelined round trip; what
        ``drainer.epochs.check`` compares with its record in Postgres (docs/architecture.md#buffer-epoch)."""
        if not candidate:
            raise ValueError("candidate must be a non-empty epoch")
        pipe = self._client.pipeline(transaction=False)
        for shard in range(self.shards):
            self._scripts.epoch(keys=[self.keys(shard).epoch], args=[candidate], client=pipe)
        return [(str(epoch), bool(int(started))) for epoch, started in pipe.execute()]

    def circuit_until_ms(self, shard: int) -> int:
        """Until when the shard's Postgres-outage circuit is open (0: closed)."""
        return int(self._client.hget(self.keys(shard).drain_circuit, "until_ms") or 0)

    def open_circuit(self, shard: int, *, now_ms: int, base_ms: int, max_ms: int) -> int:
        """One more outage in a row: the circuit stays open for ``min(max_ms, base_ms · 2^(n−1))``.
        Returns that delay in ms (``lua/open_circuit.lua``)."""
        _require("base_ms", base_ms, 1)
        _require("max_ms", max_ms, base_ms)
        delay, _failures = self._scripts.open_circuit(
            keys=[self.keys(shard).drain_circuit], args=[now_ms, base_ms, max_ms]
        )
        return int(delay)

    def close_circuit(self, shard: int) -> None:
        """A round reached Postgres: forget the outage streak."""
        self._client.delete(self.keys(shard).drain_circuit)

    @contextmanager
    def shard_lock(self, shard: int, kind: Literal["drain", "sweep"], *, timeout_s: float) -> Iterator[bool]:
        """Hold the shard's drain or sweep lock (NX PX ``timeout_s``) for the ``with`` block; yields whether
        it was acquired — ``False`` means another task holds it (someone got there first: return).

        A lock that expired before the block ended (the holder stalled past ``timeout_s``) is logged on
        release, not raised: the work is done, and the scripts stay safe under two holders (each lease is
        an atomic pop).
        """
        k = self.keys(shard)
        name = k.drain_lock if kind == "drain" else k.sweep_lock
        token = uuid.uuid4().hex
        # A script, not a plain SET NX: it runs at maxmemory too (lua/take_lock.lua), as the drain must.
        if self._scripts.take_lock(keys=[name], args=[token, max(1, int(timeout_s * 1000))]) != 1:
            yield False
            return
        try:
            yield True
        finally:
            if self._scripts.release_claim(keys=[name], args=[token]) != 1:
                log.warning("%s lock of shard %s expired before release", kind, shard, extra={"shard": shard})

    def count_drained(self, shard: int, count: int, *, now_ms: int) -> None:
        """Count ``count`` entries that left the buffer (acked or dead-lettered) in the shard's drain rate."""
        _require("count", count, 0)
        key = self.keys(shard).drained(stats.bucket_of(now_ms))
        self._scripts.count_drained(keys=[key], args=[count, stats.BUCKET_TTL_MS])  # runs at maxmemory too

    # -- reads for operators, the sweep and the gauges --------------------------------------------------------

    def shard_stats(self, *, now_ms: int) -> list[ShardStats]:
        """Every shard's depth, leased, retrying, dead, oldest age, stale count and drain rate (``buffer.stats``)."""
        return stats.read(self._client, self._scripts, [self.keys(s) for s in range(self.shards)], now_ms=now_ms)

    def memory(self) -> list[NodeMemory]:
        """Used and max memory of every master (one ``INFO memory`` each), for the gauges and the dashboard: at
        ``maxmemory`` with ``noeviction`` every trigger fails open and only the drain's scripts still write
        (docs/operations.md#buffer-memory). A cluster's masters are asked one by one: each holds its own slots."""
        nodes = []
        for node in primaries(self._client):
            info = node.info("memory")
            kwargs = node.connection_pool.connection_kwargs
            nodes.append(
                NodeMemory(
                    f"{kwargs.get('host', '')}:{kwargs.get('port', '')}",
                    int(info["used_memory"]),
                    int(info.get("maxmemory", 0)),
                )
            )
        return nodes

    def recount(self, shard: int) -> tuple[int, int]:
        """Rebuild the shard's counters from its queues (``lua/recount.lua``): for a buffer filled before the
        scripts kept them. Returns the queued count before and after. O(envs of the shard): an operator's
        one-off, not for a hot path."""
        k = self.keys(shard)
        before, after = self._scripts.recount(keys=[k.orgs, k.queued, k.heads], args=[k.base])
        return int(before), int(after)

    # -- operator screens: the dashboard, its drill-downs, buffered-run pages, env deletion (buffer.operators)

    def circuits_until_ms(self) -> list[int]:
        """``circuit_until_ms`` of every shard, in shard order, in one round trip."""
        return operators.circuits_until_ms(self._client, [self.keys(s) for s in range(self.shards)])

    def shard_stats_of(self, shard: int, *, now_ms: int) -> ShardStats:
        """``shard_stats`` of one shard only (a drill-down page), one round trip."""
        return stats.read(self._client, self._scripts, [self.keys(shard)], now_ms=now_ms)[0]

    def switch_counts(self) -> list[tuple[int, int, int]]:
        """Per shard, in order: how many orgs and envs are paused and envs have their intake closed (the
        sizes of ``switches``), in one round trip."""
        return operators.switch_counts(self._client, [self.keys(s) for s in range(self.shards)])

    def top_envs(self, shard: int, *, limit: int) -> ShardTop:
        """The shard's ``limit`` deepest orgs and envs by queue length, and its totals (``lua/top_envs.lua``):
        one script call, O(orgs + envs of this shard), a reply of at most ``limit`` rows each."""
        _require("limit", limit, 1)
        return operators.top_envs(self._scripts, self.keys(shard), limit=limit)

    def queue_head(self, *, org_id: int, env_id: int, limit: int) -> list[Entry]:
        """The first ``limit`` entries waiting in the env's queue (the next to be leased, oldest first),
        without their snapshots; two round trips."""
        _require("limit", limit, 1)
        ids = operators.queue_head(self._client, self.keys_for_org(org_id), env_id, limit=limit)
        return [entry for entry in self.get_many(ids, org_id=org_id, snapshot=False) if entry is not None]

    def env_page(self, *, org_id: int, env_id: int, before: tuple[int, str] | None, limit: int) -> list[Entry]:
        """The env's entries still in the buffer (QUEUED, LEASED or DEAD: not yet acked), newest first by
        ``(created_ms, run_id)`` descending, strictly before the cursor ``before`` (``None``: from the
        newest), at most ``limit``, snapshots included; each ``Entry.created_ms`` is set.

        The order and ``created_ms`` are those of the runs' Postgres rows (``created_at``, then ``id`` in byte
        order), so a list can merge both and page with one cursor. One script call on the env index
        (``lua/env_page.lua``): O(log N + limit) whatever the env holds, and a cursor stays valid while
        entries drain between pages (an acked entry has left the index: its row is in Postgres).
        """
        return self._env_page(org_id, env_id, before, limit, "down", name="before")

    def find_entry(self, run_id: str) -> Entry | None:
        """The entry of ``run_id`` in whichever shard holds it, any state, or ``None``: for an operator who
        has only the run id (the org, hence the shard, is unknown). One read per shard, one round trip."""
        shard_keys = [self.keys(s) for s in range(self.shards)]
        for flat in operators.find_entry_replies(self._client, self._scripts, shard_keys, run_id):
            entry = parse_entry(run_id, flat)
            if entry is not None:
                return entry
        return None

    def env_census(self, *, org_id: int, env_ids: Sequence[int]) -> list[EnvCensus]:
        """Per env of one org: its queue length (exact) and its retrying, leased and dead entries among the
        first ``operators.CENSUS_SCAN`` members of the shard's sets (``EnvCensus.complete`` says whether that
        was all of them). One script call (``lua/env_census.lua``)."""
        k = self.keys_for_org(org_id)
        return operators.env_census(self._scripts, k, list(env_ids), scan=operators.CENSUS_SCAN)

    def dead_letter_env(self, *, org_id: int, env_id: int, now_ms: int, reason: str) -> int:
        """Dead-letter every queued, retrying and leased entry of the env (its rows are being deleted), with
        ``reason`` as their last error; they stay for operators. Returns how many became DEAD
        (``lua/dead_letter_env.lua``, called in batches of ``operators.DEAD_LETTER_BATCH``)."""
        return operators.dead_letter_env(
            self._scripts, self.keys_for_org(org_id), org_id=org_id, env_id=env_id, now_ms=now_ms, reason=reason,
            batch=operators.DEAD_LETTER_BATCH,
        )  # fmt: skip

    def sweep_cycle(self, shard: int, *, max_orgs: int) -> SweepCycle:
        """Where the shard's sweep cycle stands and which orgs the next pass visits."""
        _require("max_orgs", max_orgs, 1)
        return sweep_state.read_cycle(self._client, self.keys(shard), max_orgs=max_orgs)

    def find_stuck(
        self, shard: int, orgs: Sequence[int], *, now_ms: int, older_than_ms: int, max_entries: int
    ) -> StuckScan:
        """Stale entries of ``orgs``, and the shard's expired leases and dead letters, in one round trip."""
        _require("max_entries", max_entries, 1)
        return sweep_state.scan(
            self._client, self._scripts, self.keys(shard), orgs, now_ms=now_ms, older_than_ms=older_than_ms,
            max_entries=max_entries,
        )  # fmt: skip

    def commit_sweep(self, shard: int, commit: SweepCommit) -> None:
        """Write a sweep pass's counts and the cycle's next state atomically."""
        sweep_state.commit(self._client, self.keys(shard), commit)

    def clear_sweep_state(self, shards: Iterable[int] | None = None) -> None:
        """Delete the sweep's cycle state of ``shards`` (default: all)."""
        sweep_state.clear(self._client, [self.keys(s) for s in (range(self.shards) if shards is None else shards)])

    def statuses(self, shard: int, run_ids: Sequence[str]) -> list[EntryStatus | None]:
        """The status of each entry, ``None`` once its hash is gone; one round trip."""
        return [
            None if s is None else EntryStatus(s)
            for s in sweep_state.entry_statuses(self._client, self.keys(shard), run_ids)
        ]

    def orgs(self, shard: int) -> list[int]:
        """Orgs of the shard with queued entries, sorted (the drain's fairness order)."""
        return sorted(int(org) for org in self._client.smembers(self.keys(shard).orgs))

    def envs(self, shard: int, org_id: int) -> list[int]:
        """Envs of the org with queued entries, sorted."""
        return sorted(int(env) for env in self._client.smembers(self._checked_keys(shard, org_id).org_envs(org_id)))

    def depth(self, shard: int, env_id: int) -> int:
        """Entries waiting in the env's queue (the number the per-env cap applies to)."""
        return self._client.llen(self.keys(shard).queue(env_id))

    def shard_has_work(self, shards: Iterable[int] | None = None) -> list[bool]:
        """Per shard (default: all, in order): anything queued, waiting to retry or leased (maybe expired).

        One pipelined round trip; the drain fan-out sends only shards with work.
        """
        shard_list = list(range(self.shards)) if shards is None else list(shards)
        pipe = self._client.pipeline(transaction=False)
        for shard in shard_list:
            k = self.keys(shard)
            pipe.scard(k.orgs)
            pipe.zcard(k.retry)
            pipe.zcard(k.leases)
        counts = pipe.execute()
        return [any(counts[i * 3 : i * 3 + 3]) for i in range(len(shard_list))]

    def claim_sends(self, shards: Sequence[int], *, ttl_ms: int) -> list[int]:
        """Of ``shards``, in order, those with no drain task waiting in the broker, now marked as having one
        (SET NX PX ``ttl_ms`` each, one pipelined round trip). The fan-out sends a task only for these, so
        the broker holds at most one task per shard however short the tick (docs/architecture.md#fan-out);
        the mark lapses with the task's expiry if the task is never run. Each mark is a script
        (``lua/claim_send.lua``), so the fan-out runs when Redis is at maxmemory too."""
        _require("ttl_ms", ttl_ms, 1)
        shard_list = list(shards)
        if not shard_list:
            return []
        pipe = self._client.pipeline(transaction=False)
        for shard in shard_list:
            self._scripts.claim_send(keys=[self.keys(shard).drain_sent], args=[ttl_ms], client=pipe)
        return [shard for shard, claimed in zip(shard_list, pipe.execute(), strict=True) if claimed == 1]

    def clear_send(self, shard: int) -> None:
        """The shard's drain task has left the broker (it is running): the next tick may send another."""
        self._client.delete(self.keys(shard).drain_sent)

    # -- bulk actions (runs.bulk) ---------------------------------------------------------------------------

    def cancel_many(
        self, run_ids: Sequence[str], *, org_id: int, env_id: int, now_ms: int, reason: str
    ) -> BulkCancelResult:
        """Flag a chunk of one env's buffered runs cancelled in one script call (``lua/cancel_many.lua``):
        at most ``MAX_CANCEL_CHUNK`` ids. Ids with no live entry of the env come back in ``to_postgres``."""
        ids = list(dict.fromkeys(run_ids))
        if len(ids) > MAX_CANCEL_CHUNK:
            raise ValueError(f"at most {MAX_CANCEL_CHUNK} run ids per call, got {len(ids)}")
        if not ids:
            return BulkCancelResult(0, 0, [])
        k = self.keys_for_org(org_id)
        reply = self._scripts.cancel_many(keys=[k.entry(run_id) for run_id in ids], args=[env_id, now_ms, reason])
        flagged, already, *elsewhere = (int(v) for v in reply)
        return BulkCancelResult(flagged, already, [ids[i - 1] for i in elsewhere])

    def env_page_after(self, *, org_id: int, env_id: int, after: tuple[int, str] | None, limit: int) -> list[Entry]:
        """``env_page`` going up: the env's entries strictly after ``after`` (``None``: from the oldest),
        oldest first, at most ``limit``, snapshots included, ``created_ms`` set (``lua/env_page.lua`` going up).
        A run list's previous page walks this way; O(log N + limit)."""
        return self._env_page(org_id, env_id, after, limit, "up", name="after")

    def _env_page(
        self,
        org_id: int,
        env_id: int,
        cursor: tuple[int, str] | None,
        limit: int,
        direction: Literal["down", "up"],
        *,
        name: str,
    ) -> list[Entry]:
        """One ``lua/env_page.lua`` call from ``cursor`` (an index position: created_ms, run id) in ``direction``;
        ``name`` is the caller's argument name, for the error."""
        _require("limit", limit, 1)
        member = ""
        if cursor is not None:
            created_ms, run_id = cursor
            _require(f"{name}[0]", created_ms, 0)
            if created_ms >= 10**15 or not isinstance(run_id, str):
                raise ValueError(f"{name} must be (created_ms < 10**15, run id str), got {cursor!r}")
            member = f"{created_ms:015d}{run_id}"
        k = self.keys_for_org(org_id)
        flat = self._scripts.env_page(keys=[k.index(env_id)], args=[k.base, member, limit, 1, direction])
        return [
            dataclasses.replace(parse_leased(flat[i], flat[i + 2]), created_ms=int(flat[i + 1]))
            for i in range(0, len(flat), 3)
        ]


_ACCEPT_OUTCOMES = frozenset(
    {TriggerStatus.ACCEPTED, TriggerStatus.DUPLICATE, TriggerStatus.CLOSED, TriggerStatus.FULL}
)


def _trigger_reply(status: TriggerStatus, value: str | int, count: int) -> TriggerReply:
    counted = None if count < 0 else count
    if status in (TriggerStatus.REQ_HELD, TriggerStatus.IDEM_HELD):
        return TriggerReply(status, holder=str(value))
    if status is TriggerStatus.PASS:
        return TriggerReply(status, tripped=int(value) == 1, count=counted)
    depth = int(value) if status in (TriggerStatus.ACCEPTED, TriggerStatus.FULL, TriggerStatus.IDEM_UNCLAIMED) else None
    return TriggerReply(status, depth=depth, tripped=True, count=counted)


def _accept_result(status: AcceptStatus, value: str | int) -> AcceptResult:
    if status is AcceptStatus.IDEMPOTENT:
        return AcceptResult(status, existing_run_id=str(value))
    if status in (AcceptStatus.ACCEPTED, AcceptStatus.FULL):
        return AcceptResult(status, depth=int(value))
    return AcceptResult(status)


MAX_CANCEL_CHUNK = 1000
"""The most run ids one ``cancel_many`` call takes: a script holds Redis for the whole chunk."""


@dataclass(frozen=True, slots=True)
class BulkCancelResult:
    """What ``Buffer.cancel_many`` did to a chunk (see ``lua/cancel_many.lua``)."""

    flagged: int  # newly flagged cancelled
    already: int  # were cancelled before
    to_postgres: list[str]  # acked, or no entry of this env: cancel them as rows (if they are)
