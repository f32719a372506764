"""The trigger side of the buffer: what ``runs/`` calls (docs/architecture.md#the-redis-buffer).

The trigger path (``accept``, ``trigger``, the idempotency and request-key claims, the gate's counter) and the
API's work on buffered runs (mutations of one run, the run list's pages, bulk cancels). A mixin of
``buffer.buffer.Buffer``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Literal

from buffer import metrics, stored_snapshot
from buffer.core import BufferCore, require
from buffer.keys import ClaimKind, ShardKeys
from buffer.values import (
    MAX_CANCEL_CHUNK,
    AcceptResult,
    AcceptStatus,
    BulkCancelResult,
    Entry,
    GateArgs,
    IdemRef,
    MutationResult,
    MutationStatus,
    NotReplicated,
    RestoredKey,
    TriggerReply,
    TriggerStatus,
    opt_int,
    parse_leased,
    unpack_snapshot,
)

_ACCEPT_OUTCOMES = frozenset(
    {TriggerStatus.ACCEPTED, TriggerStatus.DUPLICATE, TriggerStatus.CLOSED, TriggerStatus.FULL}
)


def _trigger_reply(status: TriggerStatus, value: str | int, count: int, kick: int = 0) -> TriggerReply:
    counted = None if count < 0 else count
    if status in (TriggerStatus.REQ_HELD, TriggerStatus.IDEM_HELD):
        return TriggerReply(status, holder=str(value))
    if status is TriggerStatus.PASS:
        return TriggerReply(status, tripped=int(value) == 1, count=counted)
    depth = int(value) if status in (TriggerStatus.ACCEPTED, TriggerStatus.FULL, TriggerStatus.IDEM_UNCLAIMED) else None
    return TriggerReply(status, depth=depth, tripped=True, count=counted, kicked=int(kick) == 1)


def _accept_result(status: AcceptStatus, value: str | int, kick: int = 0) -> AcceptResult:
    if status is AcceptStatus.IDEMPOTENT:
        return AcceptResult(status, existing_run_id=str(value))
    if status in (AcceptStatus.ACCEPTED, AcceptStatus.FULL):
        return AcceptResult(status, depth=int(value), kicked=int(kick) == 1)
    return AcceptResult(status)


def _idem_key(k: ShardKeys, env_id: int, idempotency: IdemRef) -> str:
    """The idempotency key's name, after checking the reference belongs to ``env_id`` (accept and trigger)."""
    if idempotency.env_id != env_id:
        raise ValueError(f"idempotency.env_id {idempotency.env_id} differs from env_id {env_id}")
    require("idempotency.ttl_ms", idempotency.ttl_ms, 1)
    return k.idem(env_id, idempotency.task, idempotency.key)


def _lua_number(value: int | float) -> str:
    """A JSON number as Lua's ``tostring`` writes it (append_tags deduped snapshot tags in Lua, with cjson's
    doubles): ``%.14g``, so 7 is "7" and 1.5 is "1.5"."""
    return f"{float(value):.14g}"


class TriggerSide(BufferCore):
    """The buffer as ``runs/`` uses it: triggers, claims, the gate, and buffered runs' mutations and pages."""

    def _stored(self, snapshot: str, now_ms: int) -> tuple[str | bytes, str]:
        """What accept and trigger send for ``snapshot``: its stored form, and its created_ms (the env index
        position, read here because no script reads a snapshot; ``now_ms`` if it has none)."""
        return stored_snapshot.pack(snapshot, min_bytes=self._compress_min_bytes), stored_snapshot.created_ms(
            snapshot, now_ms
        )

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
        kick_ttl_ms: int | None = None,
    ) -> AcceptResult:
        """Park a snapshot; see ``lua/accept.lua``. Counted in ``mollifier_accepted_total{result}``.

        ``kick_ttl_ms``: an accept into a shard with no drain task sets its mark for that long and says so
        (``AcceptResult.kicked``: the caller sends the task, docs/architecture.md#kick); None: kicks off.

        With ``accept_replicas`` the script and a ``WAIT`` share one connection (a pipeline: WAIT counts the
        replicas that have this connection's writes); an accept no replica confirmed raises ``NotReplicated``.
        """
        require("max_per_env", max_per_env, 0)
        if not isinstance(snapshot, str) or not snapshot:
            raise ValueError("snapshot must be a non-empty JSON string")
        k = self.keys_for_org(org_id)
        keys = [k.entry(run_id), k.queue(env_id), k.org_envs(org_id), k.orgs, k.closed_envs]
        stored, created_ms = self._stored(snapshot, now_ms)
        args: list[str | bytes | int] = [run_id, env_id, org_id, stored, now_ms, max_per_env, "", k.base, created_ms]
        if idempotency is not None:
            keys.append(_idem_key(k, env_id, idempotency))
            args[6] = idempotency.ttl_ms
        if kick_ttl_ms is not None:
            require("kick_ttl_ms", kick_ttl_ms, 1)
            args.append(kick_ttl_ms)
        if self._accept_replicas:
            pipe = self._client.pipeline(transaction=False)
            self._scripts.accept(keys=keys, args=args, client=pipe)
            pipe.execute_command("WAIT", self._accept_replicas, self._accept_wait_ms)
            (status, value, *kick), replicas = pipe.execute()
        else:
            status, value, *kick = self._scripts.accept(keys=keys, args=args)
            replicas = None
        result = _accept_result(AcceptStatus(status), value, *kick)
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
        kick_ttl_ms: int | None = None,
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

        ``kick_ttl_ms``: as ``accept``'s (``TriggerReply.kicked``); None: kicks off.
        """
        require("max_per_env", max_per_env, 0)
        require("request_ttl_ms", request_ttl_ms, 1)
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
            require("window_ms", gate.window_ms, 1)
            require("threshold", gate.threshold, 0)
            require("hold_ms", gate.hold_ms, 0)
            args[7:11] = ["count", gate.window_ms, gate.threshold, gate.hold_ms]
        if request_key:
            keys.append(k.req(env_id, task, request_key))
            args[12] = request_ttl_ms
        if idempotency is not None:
            keys.append(_idem_key(k, env_id, idempotency))
            args[13] = idempotency.ttl_ms
            if idem_pass_ttl_ms is not None:
                require("idem_pass_ttl_ms", idem_pass_ttl_ms, 1)
                args[15] = idem_pass_ttl_ms
        if request_key and request_fence_ms > 0:
            keys.append(k.req_fence)
            args.append(request_fence_ms)
        if kick_ttl_ms is not None and can_accept:
            require("kick_ttl_ms", kick_ttl_ms, 1)
            args.extend([""] * (18 - len(args)) + [kick_ttl_ms])  # ARGV[19], after the optional fence
        replicas = None
        if self._accept_replicas and can_accept:
            pipe = self._client.pipeline(transaction=False)
            self._scripts.trigger(keys=keys, args=args, client=pipe)
            pipe.execute_command("WAIT", self._accept_replicas, self._accept_wait_ms)
            (status, value, count, *kick), replicas = pipe.execute()
        else:
            status, value, count, *kick = self._scripts.trigger(keys=keys, args=args)
        reply = _trigger_reply(TriggerStatus(status), value, int(count), *kick)
        if reply.status in _ACCEPT_OUTCOMES:
            metrics.ACCEPTED.labels(result=reply.status.value.lower()).inc()
        if reply.status is TriggerStatus.ACCEPTED and replicas is not None and replicas < self._accept_replicas:
            raise NotReplicated(run_id)
        return reply

    def confirm_replicated(self, run_id: str, *, org_id: int, env_id: int, task: str, request_key: str,
                           request_ttl_ms: int) -> None:  # fmt: skip
        """With ``accept_replicas``, raise ``NotReplicated`` unless a replica confirms (``WAIT``) what this
        primary holds: a retry answered with its request key's earlier run (buffered by an attempt that was
        answered 503) meets the bar a fresh accept meets. After a failover the promoted primary has no replica
        until one resyncs; a run answered 200 meanwhile would be lost by the next failover. The request key's
        TTL is refreshed, as every keyed trigger refreshes it: a write on this connection after the earlier
        accept in the replication stream, so the WAIT that follows it covers that accept."""
        require("request_ttl_ms", request_ttl_ms, 1)
        if not self._accept_replicas:
            return
        pipe = self._client.pipeline(transaction=False)
        pipe.pexpire(self.keys_for_org(org_id).req(env_id, task, request_key), request_ttl_ms)
        pipe.execute_command("WAIT", self._accept_replicas, self._accept_wait_ms)
        replicas = int(pipe.execute()[1])
        if replicas < self._accept_replicas:
            raise NotReplicated(run_id)

    def cancel(self, run_id: str, *, org_id: int, env_id: int, now_ms: int, reason: str) -> MutationResult:
        """Flag a buffered run cancelled (idempotent: the first cancelled_at stays); see ``lua/cancel.lua``."""
        status, cancelled_at = self._scripts.cancel(
            keys=[self.keys_for_org(org_id).entry(run_id)], args=[env_id, now_ms, reason]
        )
        return MutationResult(MutationStatus(status), cancelled_at_ms=opt_int(cancelled_at))

    def append_tags(self, run_id: str, *, org_id: int, env_id: int, tags: list[str], max_tags: int) -> MutationResult:
        """Add deduplicated tags as a hash field; TOO_MANY (nothing written) past ``max_tags``.

        ``count`` follows ``engine.add_tags``: the number of new tags, or for TOO_MANY the would-be total.
        """
        require("max_tags", max_tags, 0)
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
        text, error = unpack_snapshot(stored if stored is not None else legacy)
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
        require("delay_until_ms", delay_until_ms, 0)
        (status,) = self._scripts.reschedule(
            keys=[self.keys_for_org(org_id).entry(run_id)], args=[env_id, delay_until_ms]
        )
        return MutationResult(MutationStatus(status))

    def set_metadata(
        self, run_id: str, *, org_id: int, env_id: int, metadata_json: str, expected_version: int
    ) -> MutationResult:
        """Replace a buffered run's metadata if its version is still ``expected_version``; see
        ``lua/set_metadata.lua``. CONFLICT carries the current version and metadata for the retry."""
        require("expected_version", expected_version, 0)
        if not isinstance(metadata_json, str) or not metadata_json.startswith("{"):
            raise ValueError("metadata_json must be a JSON object")
        status, version, current = self._scripts.set_metadata(
            keys=[self.keys_for_org(org_id).entry(run_id)], args=[env_id, expected_version, metadata_json]
        )
        return MutationResult(MutationStatus(status), version=int(version), metadata=current or None)

    # -- claims, request keys and the gate ------------------------------------------------------------------

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
        require("ttl_ms", ttl_ms, 1)
        key_name = self.keys_for_org(org_id).claim(kind, env_id, task, key)
        holder = self._scripts.claim(keys=[key_name], args=[run_id, ttl_ms, stale_run_id or ""])
        return holder or None

    def release_claim(
        self, kind: ClaimKind, *, org_id: int, env_id: int, task: str, key: str, run_id: str, grace_ms: int = 0
    ) -> bool:
        """Delete the key only if ``run_id`` holds it; ``True`` if it did. ``grace_ms`` > 0: cut it to live at
        most that long instead (the claim of a committed row, ``lua/release_claim.lua``)."""
        require("grace_ms", grace_ms, 0)
        key_name = self.keys_for_org(org_id).claim(kind, env_id, task, key)
        args: list[str | int] = [run_id, grace_ms] if grace_ms > 0 else [run_id]
        return int(self._scripts.release_claim(keys=[key_name], args=args)) == 1

    def restore_request_keys(self, restored: Sequence[RestoredKey], *, fence_org_id: int | None, fence_ms: int) -> None:
        """Put request keys recorded in Postgres during a Redis outage back (``SET NX``: a key Redis holds keeps
        its run), then raise the fence of ``fence_org_id``'s shard for ``fence_ms`` (None: not yet, more keys
        wait). One pipeline; on a cluster each shard's keys and fence go to their own master, in this order."""
        require("fence_ms", fence_ms, 1)
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
        require("window_ms", window_ms, 1)
        require("threshold", threshold, 0)
        require("hold_ms", hold_ms, 0)
        k = self.keys_for_org(org_id)
        tripped, count = self._scripts.trip(
            keys=[k.rate(env_id), k.tripped(env_id), k.closed_envs],
            args=[now_ms, window_ms, threshold, hold_ms, env_id],
        )
        return tripped == 1, int(count)

    # -- the run list and bulk actions (runs.listing, runs.bulk) ---------------------------------------------

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
        require("limit", limit, 1)
        member = ""
        if cursor is not None:
            created_ms, run_id = cursor
            require(f"{name}[0]", created_ms, 0)
            if created_ms >= 10**15 or not isinstance(run_id, str):
                raise ValueError(f"{name} must be (created_ms < 10**15, run id str), got {cursor!r}")
            member = f"{created_ms:015d}{run_id}"
        k = self.keys_for_org(org_id)
        flat = self._scripts.env_page(keys=[k.index(env_id)], args=[k.base, member, limit, 1, direction])
        return [
            dataclasses.replace(parse_leased(flat[i], flat[i + 2]), created_ms=int(flat[i + 1]))
            for i in range(0, len(flat), 3)
        ]

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
