"""The trigger service (docs/architecture.md#trigger-path): validate, de-duplicate, decide, write or buffer —
in that order.

1. The caller (the view) has authenticated the key into an ``EnvContext`` and parsed the body.
2. ``prepare`` validates what needs settings or the clock and builds the snapshot; a validation error
   is raised here, before any de-duplication state or the gate is touched.
3. Request-level de-duplication: ``x-trigger-request-idempotency-key`` → run id (Redis, ``REQUEST_KEY_TTL_S``), so a
   client retrying after a lost response gets the same run. While Redis is unreachable the key is recorded
   in Postgres with a directly written row, and put back into Redis after the outage (``runs.request_keys``,
   docs/api.md#request-idempotency-during-a-redis-outage).
4. Task-level idempotency: a live holder is returned with ``isCached: true``. The key is claimed in Redis
   (compare-and-set) only while Redis alone knows its run: for a buffered run, until its row is committed,
   and for a direct write that could have been buffered, until that write commits. A trigger that can
   never be buffered only checks the key; the Postgres unique index keeps it to one run
   (docs/architecture.md#idempotency). A trigger to be buffered whose key no claim holds asks that index
   first (``_accept_unclaimed``).
5. The gate decides: pass through → ``engine.trigger``; mollify → ``buffer.accept``. Redis unreachable
   → pass through (fail open). Postgres unreachable on the pass-through path → buffer instead, for
   enrolled orgs.
6. The answer is ``Triggered(run_id, is_cached)`` whichever path was taken.

Steps 3–5 are one Redis round trip (``Buffer.trigger``, ``buffer/lua/trigger.lua``): the script claims both
keys, counts the trigger in the gate and accepts it, atomically and in that order, or stops where an answer
needs Python — a key held by another run, whose run may be alive, reusable or gone (a Postgres question).
Python answers that question alone (``_take_over``): it answers with the holder's run, or takes the key over
and calls the same script again, so the decision order lives in the script only. A passed-through trigger
leaves the script holding its keys and goes on to ``engine.trigger``. So a warm buffered trigger costs one Redis round trip
and no Postgres query (docs/architecture.md#trigger-path).

Claims made in 3–4 are released again if this call does not end up creating its run, so a failed
trigger never leaves a key pointing at a run that does not exist.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from django.db import DatabaseError, transaction

from buffer import gate
from buffer.breaker import BreakerOpen
from buffer.buffer import Buffer, BufferUnavailable, NotReplicated
from buffer.values import AcceptStatus, ClaimKind, EntryStatus, GateArgs, IdemRef, TriggerStatus
from mollifier_project.clock import from_ms, to_ms
from mollifier_project.config import MollifierSettings
from runs import engine, fast_json, ids, kick, request_keys
from runs import metadata as metadata_codec
from runs.auth import EnvContext
from runs.db_errors import Failure, classify
from runs.durations import DurationError, idempotency_ttl, parse_delay, parse_ttl
from runs.locate import Where, locate
from runs.models import MAX_TAGS
from runs.schemas import TriggerOptions
from runs.snapshot import Snapshot, normalise_tags, to_snapshot

log = logging.getLogger(__name__)

# A claim whose run exists nowhere is taken over only when it is older than any trigger request can
# last (gunicorn's timeout is 30 s): before that, its trigger may simply not have written yet.
CLAIM_STALE_MS = 60_000
# How long the idempotency claim of a passed-through trigger of an env that could be buffered lives: its direct
# write, however slow (a request lasts at most gunicorn's 30 s), is covered; after that its row and the unique
# index answer for the key, and the claim stops costing Redis memory (docs/architecture.md#idempotency).
DIRECT_CLAIM_MS = CLAIM_STALE_MS
# How long the idempotency claim of a directly written run outlives its commit (cut, not deleted): longer than
# a lookup-first trigger may take from its Postgres lookup to its script call (``LOOKUP_FIRST_MAX_MS``).
COMMITTED_CLAIM_GRACE_MS = 5_000
# A lookup-first trigger (``_key_free_in_postgres``) trusts its lookup only if its script call starts within this
# of the lookup's start, and only if the ack's grace (``ACK_GRACE_S``, how long a drained run's claim outlives its
# row's commit) is at least twice this; otherwise the script stops at IDEM_UNCLAIMED and asks again.
LOOKUP_FIRST_MAX_MS = COMMITTED_CLAIM_GRACE_MS // 2
# Script calls per trigger, at most: one after restoring request keys (UNFENCED), one after each key is taken
# over (request, idempotency), the last, and one more per key for a takeover another trigger won (its holder is
# then young: answered, or 409, on the next call). More means keys churned round after round: 503, retry.
MAX_SCRIPT_CALLS = 6
IN_FLIGHT_WAIT_S = 1.0
IN_FLIGHT_POLL_S = 0.025
REUSABLE_KEY_STATUSES = engine.REUSABLE_KEY_STATUSES


class TriggerError(Exception):
    """A trigger refused with an HTTP status and a message for ``{"error": …}``."""

    status = 400

    def __init__(self, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InvalidTrigger(TriggerError):
    status = 400


class Unprocessable(TriggerError):
    status = 422


class PayloadTooLarge(TriggerError):
    status = 413


class Backpressure(TriggerError):
    status = 429


class Unavailable(TriggerError):
    status = 503


class MaybeWritten(Unavailable):
    """The direct write failed in a way that may have come after its commit (the reply was lost): the row may
    exist. The claims keep pointing at this run, so the client's retry finds the row if it was written
    (and is told to retry — 409 — while it cannot tell), instead of making a second run."""


class InFlight(TriggerError):
    """Another trigger holds the key and has not created its run yet: the client retries (409)."""

    status = 409


@dataclass(frozen=True, slots=True)
class BatchRef:
    batch_id: str
    index: int


@dataclass(frozen=True, slots=True)
class Triggered:
    run_id: str
    is_cached: bool
    path: str  # direct | buffered | cached | replayed — for logs and tests, not the API


@dataclass(slots=True)
class _Claims:
    """Redis claims this call made, released unless the call creates its run."""

    buffer: Buffer
    env: EnvContext
    task: str
    run_id: str
    held: list[tuple[ClaimKind, str]] = field(default_factory=list)
    grace_ms: int = 0  # > 0: the run exists; its claims are cut to this, not deleted

    def hold(self, kind: ClaimKind, key: str) -> None:
        if (kind, key) not in self.held:
            self.held.append((kind, key))

    def release(self) -> None:
        for kind, key in self.held:
            try:
                self.buffer.release_claim(
                    kind,
                    org_id=self.env.org_id,
                    env_id=self.env.env_id,
                    task=self.task,
                    key=key,
                    run_id=self.run_id,
                    grace_ms=self.grace_ms,
                )
            except BufferUnavailable:
                log.warning("could not release %s claim for run %s", kind, self.run_id)
        self.held.clear()


# ------------------------------------------------------------------------------------------ prepare


def encode_payload(payload: Any, payload_type: str) -> tuple[str | None, str]:
    """The payload as the string packet the SDK sends; a raw JSON value from another client is encoded."""
    if payload is None:
        return None, payload_type
    if isinstance(payload, str):
        return payload, payload_type
    return fast_json.dumps(payload), "application/json"


def prepare(
    env: EnvContext,
    task: str,
    options: TriggerOptions,
    payload: Any,
    *,
    now_ms: int,
    max_payload_bytes: int,
    max_metadata_bytes: int,
    batch: BatchRef | None = None,
    idempotency_key: str | None = None,
    run_id: str | None = None,
) -> Snapshot:
    """Validate what the schema cannot and build the snapshot. Raises a ``TriggerError`` subclass.

    Everything the engine would refuse at write time is refused here too, so a buffered trigger can
    never be answered 200 and fail later for a reason the request already showed.
    """
    if not task or len(task) > 128:
        raise InvalidTrigger("taskIdentifier: must be 1–128 characters")
    now = from_ms(now_ms)
    packet, payload_type = encode_payload(payload, options.payloadType)
    size = 0 if packet is None else len(packet.encode())
    if size > max_payload_bytes:
        raise PayloadTooLarge(f"payload: {size} bytes exceeds the limit of {max_payload_bytes} bytes")
    if options.metadata is not None:  # the limit a metadata `set` enforces later holds from the start
        try:
            metadata_codec.checked(options.metadata, limit=max_metadata_bytes)
        except metadata_codec.MetadataTooLarge as exc:
            raise PayloadTooLarge(
                f"options.metadata: {exc.size} bytes exceeds the limit of {exc.limit} bytes"
            ) from None
        except metadata_codec.MetadataInvalid:
            pass  # not JSON at all (NaN…): engine.validate below names it
    tags = normalise_tags(options.tags)
    if len(tags) > MAX_TAGS:
        raise Unprocessable(f"Runs can only have {MAX_TAGS} tags, you're trying to set {len(tags)}.")
    try:
        delay_until = parse_delay(options.delay, now=now) if options.delay else None
    except DurationError as exc:
        raise InvalidTrigger(f"options.delay: {exc}") from None
    try:
        ttl = parse_ttl(options.ttl) if options.ttl is not None else None
    except DurationError as exc:
        raise InvalidTrigger(f"options.ttl: {exc}") from None
    key = idempotency_key or options.idempotencyKey
    expires = now + idempotency_ttl(options.idempotencyKeyTTL) if key else None
    snapshot = Snapshot(
        id=run_id or ids.new_run_id(now_ms),
        env_id=env.env_id,
        org_id=env.org_id,
        task_identifier=task,
        created_at=now,
        payload=packet,
        payload_type=payload_type,
        metadata=options.metadata,
        tags=tags,
        idempotency_key=key,
        idempotency_key_user=options.idempotencyKeyOptions.key if key and options.idempotencyKeyOptions else None,
        idempotency_key_expires_at=expires,
        queue=options.queue.name if options.queue else None,
        concurrency_key=options.concurrencyKey,
        delay_until=delay_until,
        ttl=ttl,
        max_attempts=options.maxAttempts,
        max_duration=int(options.maxDuration) if options.maxDuration is not None else None,
        machine=options.machine,
        priority=int(options.priority or 0),
        batch_id=batch.batch_id if batch else None,
        batch_index=batch.index if batch else None,
        parent_run_id=options.parentRunId,
    )
    reason = engine.validate(snapshot)
    if reason:
        raise Unprocessable(_api_names(reason))
    return snapshot


# Snapshot attribute → the request field it came from, so an engine validation message names the field.
_FIELD_NAMES = {
    "task_identifier": "taskIdentifier", "payload_type": "options.payloadType", "payload": "payload",
    "idempotency_key_user": "options.idempotencyKeyOptions.key", "idempotency_key": "options.idempotencyKey",
    "concurrency_key": "options.concurrencyKey", "queue": "options.queue.name", "ttl": "options.ttl",
    "machine": "options.machine", "max_attempts": "options.maxAttempts", "max_duration": "options.maxDuration",
    "priority": "options.priority", "parent_run_id": "options.parentRunId", "metadata": "options.metadata",
    "tags": "options.tags",
}  # fmt: skip


def _api_names(reason: str) -> str:
    for attr, name in _FIELD_NAMES.items():
        if reason.startswith(attr + " "):
            return name + reason[len(attr) :]
    return reason


def is_bypass(options: TriggerOptions) -> bool:
    """Triggers the gate never buffers (docs/architecture.md#gate): a parent waits on the child, debounce, one-time tokens."""
    return (
        bool(options.resumeParentOnCompletion and options.parentRunId)
        or bool(options.debounce)
        or bool(options.oneTimeUseToken)
    )


# ------------------------------------------------------------------------------------------ trigger


def trigger(
    env: EnvContext,
    snapshot: Snapshot,
    *,
    buffer: Buffer,
    cfg: MollifierSettings,
    now_ms: int,
    bypass: bool = False,
    request_key: str | None = None,
) -> Triggered:
    """Run steps 3–6 of the module docstring for a prepared snapshot."""
    claims = _Claims(buffer, env, snapshot.task_identifier, snapshot.id)
    try:
        result = _trigger(env, snapshot, claims, buffer=buffer, cfg=cfg, now_ms=now_ms, bypass=bypass,
                          request_key=request_key)  # fmt: skip
        if result.run_id == snapshot.id:
            # Our run exists: the claims now point at it for good — except the idempotency claim of a run
            # written directly, which covered the write only: its committed row answers from now on.
            key = snapshot.idempotency_key
            direct = result.path == "direct" and key is not None and ("idem", key) in claims.held
            claims.held = [("idem", key)] if direct and key is not None else []  # released below
            # ... after a grace, not at once: a trigger that asked the unique index just before this commit and
            # calls the script after it still finds the claim (``_key_free_in_postgres``).
            claims.grace_ms = COMMITTED_CLAIM_GRACE_MS
        return result
    except MaybeWritten:
        claims.held.clear()  # see MaybeWritten: the retry must find this run, not make another
        raise
    except NotReplicated:
        # The entry is in the primary, unconfirmed by a replica: 503, and the claims keep pointing at this
        # run, so the client's retry of the same request gets this run back rather than making another.
        claims.held.clear()
        raise Unavailable(
            "The buffer could not confirm this run on a replica in time; retry shortly.",
            headers={"x-should-retry": "true"},
        ) from None
    finally:
        claims.release()


def _trigger(
    env: EnvContext, s: Snapshot, claims: _Claims, *, buffer: Buffer, cfg: MollifierSettings, now_ms: int,
    bypass: bool, request_key: str | None,
) -> Triggered:  # fmt: skip
    """Steps 3–5: the script (``Buffer.trigger``) decides, in one round trip; a key held by another run is
    answered or taken over here (``_take_over``) and the script is asked again, so the order claim → gate →
    accept lives in the script alone (docs/architecture.md#trigger-path).

    The gate's checks that need no Redis (switch, bypass, enrolment) run first, here: a trigger they pass
    through is not counted, and one that cannot be mollified does not ship its snapshot to Redis.
    """
    precheck = gate.precheck(enrolled=env.enrolled, bypass=bypass, cfg=cfg)
    can_accept = precheck is None and env.enrolled
    text = to_snapshot(s) if can_accept else ""
    idem = _idem_ref(env, s, now_ms)
    # A trigger that can never be buffered only checks its key (a buffered run may hold it); its row's unique
    # index alone keeps the key to one run, so it costs Redis nothing. One that could be buffered claims the
    # key for its direct write only, and the script stops a to-be-accepted one whose key nobody claims.
    pass_ttl = min(idem.ttl_ms, DIRECT_CLAIM_MS) if idem is not None and can_accept else None
    gate_args = (
        None if precheck is not None else GateArgs(cfg.TRIP_WINDOW_MS, cfg.TRIP_THRESHOLD, cfg.HOLD_MS, env.enrolled)
    )
    fence_ms = cfg.REQUEST_KEY_FENCE_MS if request_key else 0
    checked_at: float | None = None  # monotonic start of a lookup-first that found the key free in Postgres
    lookup_first = cfg.ACK_GRACE_S * 1000 >= 2 * LOOKUP_FIRST_MAX_MS
    if lookup_first and can_accept and idem is not None and (buffer.prefix, env.env_id) in _MOLLIFIED_ENVS:
        # The env's last trigger in this process was mollified, so this one most likely is too: ask the unique
        # index first, and the script can accept in the same call instead of stopping at IDEM_UNCLAIMED.
        started = time.monotonic()
        if _key_free_in_postgres(env, s):
            checked_at = started
    restored = False  # the request keys were restored once (UNFENCED): a second UNFENCED is not guessed at
    req_ours = False  # the request key is this call's in Redis (the script wrote it, or it was taken over)
    replayed: str | None = None  # the request key's earlier run, answered with (once a replica confirms it)
    try:
        for _ in range(MAX_SCRIPT_CALLS):
            checked = checked_at is not None and (time.monotonic() - checked_at) * 1000 < LOOKUP_FIRST_MAX_MS
            reply = buffer.trigger(
                run_id=s.id, env_id=env.env_id, org_id=env.org_id, task=s.task_identifier, now_ms=now_ms,
                request_key=request_key, request_ttl_ms=cfg.REQUEST_KEY_TTL_S * 1000, idempotency=idem,
                gate=gate_args, snapshot=text, max_per_env=cfg.MAX_BUFFERED_PER_ENV, idem_pass_ttl_ms=pass_ttl,
                check_unclaimed=can_accept and not checked, request_fence_ms=fence_ms, kick_ttl_ms=kick.mark_ttl_ms(cfg),
            )  # fmt: skip
            if can_accept:
                _remember_gate((buffer.prefix, env.env_id), reply.status)
            if reply.status is TriggerStatus.UNFENCED:
                if restored:  # the fence went up and lapsed again at once: do not guess
                    raise Unavailable(
                        "The buffer is recovering from an outage; retry shortly.", headers={"x-should-retry": "true"}
                    )
                restored = True
                fence_ms = _restore_request_keys(buffer, env, s, request_key, cfg, now_ms=now_ms)
                continue
            if reply.status is TriggerStatus.REQ_HELD:
                assert request_key is not None and reply.holder is not None
                previous = _take_over(buffer, env, s, claims, "req", request_key, reply.holder, now_ms=now_ms, cfg=cfg)
                if previous is not None:
                    replayed = previous
                    break
                req_ours = ("req", request_key) in claims.held
                continue
            if request_key and reply.status is not TriggerStatus.CLOSED and reply.status is not TriggerStatus.FULL:
                claims.hold("req", request_key)
                req_ours = True
            if reply.status is TriggerStatus.IDEM_HELD:
                assert s.idempotency_key is not None and reply.holder is not None
                live = _take_over(buffer, env, s, claims, "idem", s.idempotency_key, reply.holder, now_ms=now_ms,
                                  cfg=cfg)  # fmt: skip
                if live is not None:
                    return Triggered(live, True, "cached")
                continue
            break
        else:  # keys taken over and taken again by other triggers, round after round
            raise Unavailable("The idempotency key is contended; retry shortly.", headers={"x-should-retry": "true"})
    except BufferUnavailable as exc:  # Redis is unreachable: fail open
        unrecorded = None if req_ours else request_key
        if unrecorded:
            _note_ambiguous(env, s, unrecorded, exc, cfg=cfg)
            _check_fallback(buffer, env, cfg)  # or 503: the key cannot be recorded safely yet
        log.warning("buffer unavailable, failing open: %r", exc, extra={"env_id": env.env_id, "org_id": env.org_id})
        gate.count_fail_open()
        return _write(buffer, env, s, cfg, now_ms=now_ms, redis_up=False, text=text, request_key=unrecorded)
    if replayed is not None:  # outside the fail-open above: a new run must not be written for this request
        assert request_key is not None
        buffer.confirm_replicated(replayed, org_id=env.org_id, env_id=env.env_id, task=s.task_identifier,
                                  request_key=request_key, request_ttl_ms=cfg.REQUEST_KEY_TTL_S * 1000)  # fmt: skip
        return Triggered(replayed, False, "replayed")
    if s.idempotency_key and reply.status is TriggerStatus.PASS and pass_ttl is not None:
        claims.hold("idem", s.idempotency_key)
    decision = precheck
    if decision is None:
        assert reply.count is not None
        decision = gate.from_trip(reply.tripped, reply.count, org_id=env.org_id, env_id=env.env_id,
                                  enrolled=env.enrolled)  # fmt: skip
    gate.record(decision, prefix=buffer.prefix, org_id=env.org_id, env_id=env.env_id, now_ms=now_ms, cfg=cfg)
    if reply.status is TriggerStatus.PASS:
        return _write(buffer, env, s, cfg, now_ms=now_ms, redis_up=True, text=text)
    if reply.status is TriggerStatus.FULL or reply.status is TriggerStatus.CLOSED:
        raise _refusal(reply.status is TriggerStatus.FULL, reply.depth, cfg, now_ms=now_ms)
    if reply.status is TriggerStatus.IDEM_UNCLAIMED:
        return _accept_unclaimed(buffer, env, s, cfg, now_ms=now_ms, text=text)
    if reply.kicked:  # ACCEPTED into a shard with no drain task (docs/architecture.md#kick)
        kick.send(buffer, org_id=env.org_id, cfg=cfg)
    return Triggered(s.id, False, "buffered")  # ACCEPTED, or DUPLICATE: a retried call whose first one ran


def _take_over(
    buffer: Buffer, env: EnvContext, s: Snapshot, claims: _Claims, kind: ClaimKind, key: str, holder: str, *,
    now_ms: int, cfg: MollifierSettings,
) -> str | None:  # fmt: skip
    """The one question the script cannot answer: who holds this key, and is its run alive? Returns the run to
    answer with — a request key's earlier attempt that exists (alive or failed: ``replayed``), an idempotency
    key's live run (``isCached``) — or None, to ask the script again: the key is then this call's (taken over
    from a run that exists nowhere, or from a failed or expired one whose row gives the key up), or another
    trigger took it over first and the script says who. A young holder that exists nowhere is a trigger still
    in flight: 409 (``_settled_state``).

    A request key whose buffered attempt a fail-open retry superseded still names that attempt in Redis, and the
    drain acks it without a row: Postgres' holder (the retry's run), if it exists, is the run
    (``request_keys.recorded``)."""
    if kind == "req":
        recorded = _recorded_holder(env, s, key, holder, cfg=cfg)
        if recorded != holder and _holder_state(buffer, env, recorded) != "missing":
            return recorded
    state = _settled_state(buffer, env, holder, now_ms=now_ms)
    if state == "live" or (state == "reusable" and kind == "req"):
        return holder
    if state == "reusable":
        engine.release_idempotency_key(
            env.env_id, s.task_identifier, key, now=s.created_at, statuses=REUSABLE_KEY_STATUSES
        )
    # The idempotency claim covers this call's write; an accept re-binds it for the key's whole TTL
    # (lua/lib/entry_accept.lua).
    ttl_ms = cfg.REQUEST_KEY_TTL_S * 1000 if kind == "req" else min(_idem_ttl_ms(s, now_ms), DIRECT_CLAIM_MS)
    taken = buffer.claim(
        kind, org_id=env.org_id, env_id=env.env_id, task=s.task_identifier, key=key, run_id=s.id, ttl_ms=ttl_ms,
        stale_run_id=holder,
    )  # fmt: skip
    if taken is None:
        claims.hold(kind, key)
    return None


def _recorded_holder(env: EnvContext, s: Snapshot, key: str, holder: str, *, cfg: MollifierSettings) -> str:
    """The run Postgres records for the request key, if another than ``holder`` (Redis'); else ``holder``.
    Asked only of a retried request (REQ_HELD). Postgres unreachable: Redis' answer stands."""
    try:
        recorded = request_keys.recorded(env.env_id, s.task_identifier, key, now=s.created_at,
                                         ttl_s=cfg.REQUEST_KEY_TTL_S)  # fmt: skip
    except DatabaseError as exc:
        engine.discard_connection()
        log.warning("request key not looked up in Postgres: %r", exc, extra={"env_id": env.env_id})
        return holder
    return recorded or holder


# (key prefix, env) whose last trigger in this process the gate mollified: a hint for the order of two checks,
# never a decision (the script decides).
_MOLLIFIED_ENVS: set[tuple[str, int]] = set()
_MOLLIFIED_ENVS_MAX = 100_000
_MOLLIFIED = frozenset(
    {TriggerStatus.ACCEPTED, TriggerStatus.IDEM_UNCLAIMED, TriggerStatus.DUPLICATE, TriggerStatus.FULL,
     TriggerStatus.CLOSED}
)  # fmt: skip


def _remember_gate(env: tuple[str, int], status: TriggerStatus) -> None:
    if status in _MOLLIFIED:
        if len(_MOLLIFIED_ENVS) >= _MOLLIFIED_ENVS_MAX:
            _MOLLIFIED_ENVS.clear()
        _MOLLIFIED_ENVS.add(env)
    elif status is TriggerStatus.PASS:
        _MOLLIFIED_ENVS.discard(env)


def _key_free_in_postgres(env: EnvContext, s: Snapshot) -> bool:
    """Asked before the script, for a keyed trigger of an env being mollified: does no row hold its key? Then
    the script may accept it if no claim holds the key either (the check ``IDEM_UNCLAIMED`` stops for, made
    first: the same two checks one round trip apart, in the other order). A row holding it, live or reusable:
    False, and the script stops at ``IDEM_UNCLAIMED`` as without the hint. Postgres unreachable: True, as
    ``_accept_unclaimed`` accepts then (docs/architecture.md#idempotency)."""
    assert s.idempotency_key is not None
    try:
        return engine.idempotency_holder(env.env_id, s.task_identifier, s.idempotency_key, now=s.created_at) is None
    except DatabaseError as exc:
        engine.discard_connection()
        log.warning("idempotency lookup failed, accepting: %r", exc, extra={"env_id": env.env_id, "org_id": env.org_id})
        return True


def _accept_unclaimed(
    buffer: Buffer, env: EnvContext, s: Snapshot, cfg: MollifierSettings, *, now_ms: int, text: str
) -> Triggered:
    """A trigger to be buffered whose key no claim holds: a row may still hold it — a run written directly or
    drained, whose claim was cut or lapsed. One indexed Postgres lookup answers: a live holder → ``isCached``;
    a reusable one (failed, or its key expired) gives the key up; none → accept, which claims the key
    atomically (another trigger that got there first is answered as the holder). Postgres unreachable: accept
    (an outage must not fail triggers); a row that held the key then makes the drain write this run without
    it (docs/architecture.md#idempotency)."""
    assert s.idempotency_key is not None
    try:
        holder = engine.idempotency_holder(env.env_id, s.task_identifier, s.idempotency_key, now=s.created_at)
        if holder is not None and not holder.reusable:
            return Triggered(holder.run_id, True, "cached")
        if holder is not None:
            engine.release_idempotency_key(
                env.env_id, s.task_identifier, s.idempotency_key, now=s.created_at, statuses=REUSABLE_KEY_STATUSES
            )
    except DatabaseError as exc:
        engine.discard_connection()
        log.warning("idempotency lookup failed, accepting: %r", exc, extra={"env_id": env.env_id, "org_id": env.org_id})
    try:
        return _accept(buffer, env, s, cfg, now_ms=now_ms, text=text)
    except BufferUnavailable as exc:  # Redis went away after the script answered: fail open, as the script call does
        log.warning("buffer unavailable, failing open: %r", exc, extra={"env_id": env.env_id, "org_id": env.org_id})
        gate.count_fail_open()
        return _write(buffer, env, s, cfg, now_ms=now_ms, redis_up=False)


def _restore_request_keys(
    buffer: Buffer, env: EnvContext, s: Snapshot, request_key: str | None, cfg: MollifierSettings, *, now_ms: int
) -> int:
    """The shard's request-key fence is gone (UNFENCED): put the keys Postgres recorded during a Redis outage
    back into Redis — this request's own among them — and raise the fence (``runs.request_keys``). Returns the
    fence TTL for the script's second call, or 0 when that call should not ask for the fence: more keys are
    left to restore (this request's key is in Redis if it was recorded, so its answer is right), or Postgres
    cannot answer (the key is then checked in Redis alone, as before the fence existed: a retry of a run
    written during a Redis outage, arriving during a Postgres outage, may make a second run)."""
    assert request_key is not None
    try:
        fenced = request_keys.restore(
            buffer, org_id=env.org_id, env_id=env.env_id, task=s.task_identifier, key=request_key, now_ms=now_ms,
            ttl_ms=cfg.REQUEST_KEY_TTL_S * 1000, fence_ms=cfg.REQUEST_KEY_FENCE_MS,
        )  # fmt: skip
    except DatabaseError as exc:
        engine.discard_connection()
        log.warning("request keys not restored, Postgres unavailable: %r", exc, extra={"org_id": env.org_id})
        return 0
    return cfg.REQUEST_KEY_FENCE_MS if fenced else 0


def _note_ambiguous(env: EnvContext, s: Snapshot, key: str, exc: Exception, *, cfg: MollifierSettings) -> None:
    """A keyed script call failed after it may have been sent (a timeout, a reset; not an open breaker, which
    sends nothing): run ``s.id`` may be in the buffer holding ``key``, its answer lost. Note it in Postgres so a
    fail-open retry of the key makes one run with it (``request_keys.note_ambiguous``). Best effort: Postgres
    failing too is logged; the request goes on as before."""
    if isinstance(exc, BreakerOpen):
        return
    try:
        request_keys.note_ambiguous(env.env_id, s.task_identifier, key, run_id=s.id, now=s.created_at,
                                    ttl_s=cfg.REQUEST_KEY_TTL_S)  # fmt: skip
    except DatabaseError as exc2:
        engine.discard_connection()
        log.warning("ambiguous keyed trigger not noted in Postgres: %r", exc2, extra={"env_id": env.env_id})


def _check_fallback(buffer: Buffer, env: EnvContext, cfg: MollifierSettings) -> None:
    """May a keyed trigger fail open (its key recorded in Postgres) now? Only once no process can still trust
    the shard's fence, i.e. no retry of it can be taken for new by Redis later (docs/api.md#request-idempotency):
    Redis has failed this process for ``REQUEST_KEY_FENCE_MS`` (so nobody refreshed the fence for that long,
    and it has expired), or Redis answered with an error and the fence could be deleted. Else 503: retry."""
    unreachable = buffer.unreachable_ms()
    if unreachable is not None and unreachable >= cfg.REQUEST_KEY_FENCE_MS:
        return
    if unreachable is None:  # Redis answered (an error reply: full, read-only…), or this client has no breaker
        try:
            buffer.drop_request_fence(org_id=env.org_id)
            return
        except BufferUnavailable:
            pass
    raise Unavailable(
        "The buffer (Redis) is unreachable and this request's x-trigger-request-idempotency-key cannot be "
        "checked yet; retry shortly.",
        headers={"x-should-retry": "true"},
    )


def _idem_ref(env: EnvContext, s: Snapshot, now_ms: int) -> IdemRef | None:
    if not (s.idempotency_key and s.idempotency_key_expires_at):
        return None
    return IdemRef(env_id=env.env_id, task=s.task_identifier, key=s.idempotency_key, ttl_ms=_idem_ttl_ms(s, now_ms))


def _refusal(full: bool, depth: int | None, cfg: MollifierSettings, *, now_ms: int) -> Backpressure:
    """The 429 of a full env queue or a closed intake, with when to retry."""
    headers = {"x-ratelimit-reset": str(now_ms + max(1000, int(cfg.DRAIN_INTERVAL_S * 1000)))}
    if full:
        return Backpressure(
            f"This environment has {depth} runs waiting to be created, the most it may buffer "
            f"({cfg.MAX_BUFFERED_PER_ENV}). Retry after the reset time.",
            headers=headers,
        )
    return Backpressure("An operator has closed this environment's intake for now; retry later.", headers=headers)


def _idem_ttl_ms(s: Snapshot, now_ms: int) -> int:
    """What is left of the idempotency key's lifetime (the claim's PX)."""
    assert s.idempotency_key_expires_at is not None
    return max(1, to_ms(s.idempotency_key_expires_at) - now_ms)


def _settled_state(buffer: Buffer, env: EnvContext, holder: str, *, now_ms: int) -> str:
    """``_holder_state``, except that a young claim whose run exists nowhere is a trigger still in
    flight, not a dead one: wait briefly for its run to appear, then tell the client to retry (409)."""
    state = _holder_state(buffer, env, holder)
    minted = ids.timestamp_ms(holder)
    if state != "missing" or minted is None or now_ms - minted > CLAIM_STALE_MS:
        return state
    deadline = time.monotonic() + IN_FLIGHT_WAIT_S
    while time.monotonic() < deadline:
        time.sleep(IN_FLIGHT_POLL_S)
        state = _holder_state(buffer, env, holder)
        if state != "missing":
            return state
    raise InFlight(
        "Another trigger with this idempotency key is still being created; retry shortly.",
        headers={"x-should-retry": "true"},
    )


def _holder_state(buffer: Buffer, env: EnvContext, run_id: str) -> str:
    """``live`` (return it), ``reusable`` (its run failed: a new run may take the key) or ``missing``."""
    found = locate(env, run_id, buffer=buffer, snapshot=False, row_fields=("status",))
    if found.where is Where.ROW:
        assert found.row is not None
        return "reusable" if found.row.status in REUSABLE_KEY_STATUSES else "live"
    if found.where is Where.BUFFERED:
        assert found.entry is not None
        return "reusable" if found.entry.status is EntryStatus.DEAD else "live"
    return "missing"  # nowhere, or acked with its row not visible yet


def _accept(
    buffer: Buffer, env: EnvContext, s: Snapshot, cfg: MollifierSettings, *, now_ms: int, text: str = ""
) -> Triggered:
    """``Buffer.accept`` alone: after the unique index's answer (``IDEM_UNCLAIMED``), or a Postgres outage on
    the direct path. ``text``:
    the snapshot already serialised, if it was."""
    result = buffer.accept(
        run_id=s.id, env_id=env.env_id, org_id=env.org_id, snapshot=text or to_snapshot(s), now_ms=now_ms,
        idempotency=_idem_ref(env, s, now_ms), max_per_env=cfg.MAX_BUFFERED_PER_ENV,
        kick_ttl_ms=kick.mark_ttl_ms(cfg),
    )  # fmt: skip
    if result.kicked:
        kick.send(buffer, org_id=env.org_id, cfg=cfg)
    if result.status == AcceptStatus.FULL or result.status == AcceptStatus.CLOSED:
        raise _refusal(result.status == AcceptStatus.FULL, result.depth, cfg, now_ms=now_ms)
    if result.status == AcceptStatus.IDEMPOTENT and result.existing_run_id:
        return Triggered(result.existing_run_id, True, "cached")
    return Triggered(s.id, False, "buffered")


def _write(
    buffer: Buffer,
    env: EnvContext,
    s: Snapshot,
    cfg: MollifierSettings,
    *,
    now_ms: int,
    redis_up: bool,
    text: str = "",
    request_key: str | None = None,
) -> Triggered:
    """Pass through to Postgres; an outage diverts enrolled orgs into the buffer instead. ``request_key``: Redis
    could not record it, so it is recorded with the row, in its transaction (``runs.request_keys``)."""
    try:
        if request_key is None:
            return _insert(s)
        with transaction.atomic():
            holder = request_keys.record(
                env.env_id, s.task_identifier, request_key, run_id=s.id, now=s.created_at,
                ttl_s=cfg.REQUEST_KEY_TTL_S,
            )  # fmt: skip
            if holder is not None:
                return Triggered(holder, False, "replayed")
            answer = _insert(s)
            if answer.run_id != s.id:
                request_keys.point(env.env_id, s.task_identifier, request_key, run_id=answer.run_id)
            return answer
    except engine.InvalidRun as exc:
        raise Unprocessable(str(exc)) from None
    except DatabaseError as exc:
        # Any database failure is a retryable JSON 503, never Django's HTML 500. One that means Postgres
        # cannot take writes for a while (unreachable, read-only, disk full…: ``db_errors.OUTAGE``) diverts
        # an enrolled org's trigger into the buffer instead: an outage must not turn into failed triggers.
        engine.discard_connection()
        retry = {"x-should-retry": "true"}
        if classify(exc) is not Failure.OUTAGE:
            raise Unavailable("The database is unavailable; retry shortly.", headers=retry) from exc
        if not (env.enrolled and redis_up):
            raise MaybeWritten("The database is unavailable; retry shortly.", headers=retry) from exc
        log.warning("postgres unavailable, buffering", extra={"env_id": env.env_id, "org_id": env.org_id})
        gate.count_postgres_diversion()
        return _accept(buffer, env, s, cfg, now_ms=now_ms, text=text)


def _insert(s: Snapshot) -> Triggered:
    """``engine.trigger``, answering the holder of the idempotency key if Postgres has one."""
    result = engine.trigger(s, now=s.created_at)
    if result.outcome == engine.Outcome.IDEMPOTENCY_CLASH:
        # Redis had no claim (lost, or Redis down) but Postgres holds the key: reuse it if allowed.
        result = engine.resolve_key_clash(
            s, result, now=s.created_at, policy=engine.ClashPolicy.ANSWER_HOLDER, buffered=False
        )
        if result.outcome == engine.Outcome.IDEMPOTENCY_CLASH:
            return Triggered(result.existing_run_id or s.id, True, "cached")
    return Triggered(s.id, False, "direct")
