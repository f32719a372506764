"""The buffer's value types: what ``Buffer``'s methods take, return and raise, and how a script's reply becomes
one (docs/architecture.md#the-redis-buffer).

Callers import these from here and ``Buffer`` itself from ``buffer.buffer``. Nothing here talks to Redis: a
value is built from a reply that a side of the buffer (``buffer.trigger_side``, ``buffer.drain_side``,
``buffer.operator_side``) already read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import redis

from buffer import stored_snapshot
from buffer.charts import ChartSample
from buffer.keys import ClaimKind
from buffer.operators import EnvCensus, ShardTop
from buffer.stats import ShardStats
from buffer.sweep_state import StuckScan, SweepCommit, SweepCycle

__all__ = [
    "LEASE_FIELDS", "MAX_CANCEL_CHUNK", "AcceptResult", "AcceptStatus", "AckResult", "AckedClaim",
    "BeatLease", "BeatLeaseState", "BufferUnavailable", "BulkCancelResult", "Candidate", "ChartSample", "ClaimKind", "Entry", "EntryStatus", "EnvCensus",
    "GateArgs", "IdemRef", "LeasedRound", "MutationResult", "MutationStatus", "NodeMemory", "NotReplicated",
    "RestoredKey", "RoundCandidates", "ShardStats", "ShardTop", "StuckScan", "SweepCommit", "SweepCycle",
    "Switches", "TriggerReply", "TriggerStatus", "opt_int", "parse_entry", "parse_leased", "parse_tags",
    "unpack_snapshot",
]  # fmt: skip

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
    kicked: bool = False  # ACCEPTED into a shard with no drain task: the caller sends one (docs/architecture.md#kick)


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
    kicked: bool = False  # ACCEPTED into a shard with no drain task: the caller sends one (docs/architecture.md#kick)


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
class RoundStart:
    """What ``Buffer.start_round`` did and found: the expired leases it reclaimed (run id, attempts), how many due
    retries it promoted, and the next round's candidates."""

    reclaimed: list[tuple[str, int]]
    promoted: int
    candidates: RoundCandidates


@dataclass(frozen=True, slots=True)
class BeatLease:
    """Who holds the beat lease after a take-or-renew (``Buffer.take_beat_lease``), under which epoch."""

    holder: str
    epoch: int

    def held_by(self, holder: str) -> bool:
        return self.holder == holder


@dataclass(frozen=True, slots=True)
class BeatLeaseState:
    """The beat lease as operators see it (``Buffer.beat_lease``): the active beat, since when (ms), when it
    last renewed (ms), and how long the lease has left unless renewed (ms)."""

    holder: str
    epoch: int
    since_ms: int
    renewed_ms: int
    expires_in_ms: int


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


MAX_CANCEL_CHUNK = 1000
"""The most run ids one ``cancel_many`` call takes: a script holds Redis for the whole chunk."""


@dataclass(frozen=True, slots=True)
class BulkCancelResult:
    """What ``Buffer.cancel_many`` did to a chunk (see ``lua/cancel_many.lua``)."""

    flagged: int  # newly flagged cancelled
    already: int  # were cancelled before
    to_postgres: list[str]  # acked, or no entry of this env: cancel them as rows (if they are)


def opt_int(value: str | None) -> int | None:
    return None if value is None or value == "" else int(value)


def parse_tags(value: str | None) -> list[str]:
    """The ``extra_tags`` field: a JSON array written by append_tags (absent when none were added)."""
    if not value:
        return []
    decoded = json.loads(value)
    return [str(tag) for tag in decoded] if isinstance(decoded, list) else []


def unpack_snapshot(stored: str | None) -> tuple[str, str | None]:
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
    snapshot, snapshot_error = unpack_snapshot(fields.get("snapshot"))
    return Entry(
        run_id=run_id,
        env_id=int(fields["env"]),
        org_id=int(fields["org"]),
        status=EntryStatus(fields["status"]),
        snapshot=snapshot,
        attempts=int(fields.get("attempts", 0)),
        accepted_ms=int(fields.get("accepted_ms", 0)),
        lease_until_ms=opt_int(fields.get("lease_until_ms")),
        cancelled_at_ms=opt_int(fields.get("cancelled_at")),
        cancel_reason=fields.get("cancel_reason"),
        extra_tags=parse_tags(fields.get("extra_tags")),
        last_error=fields.get("last_error"),
        materialised=fields.get("materialised") == "1",
        delay_until_ms=opt_int(fields.get("delay_until_ms")),
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
    text, snapshot_error = unpack_snapshot(snapshot)
    return Entry(
        run_id, int(env), int(org), _STATUSES.get(status) or EntryStatus(status), text, int(attempts or 0), int(accepted or 0),
        opt_int(lease_until), opt_int(cancelled), reason, parse_tags(extra), error, done == "1",
        opt_int(delay_until), metadata or None, int(version or 0), snapshot_error=snapshot_error,
    )  # fmt: skip


_STATUSES = {status.value: status for status in EntryStatus}  # a dict lookup per leased row, not Enum's __call__
