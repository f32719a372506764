"""The drain side of the buffer: what ``drainer/`` calls (docs/architecture.md#the-redis-buffer).

A round's candidates, lease / ack / requeue / reclaim / promote / release / dead-letter, the Postgres-outage
circuit, the shard locks, the fan-out's sends, the drain rate and the buffer epochs. A mixin of
``buffer.buffer.Buffer``; ``DrainBuffer`` is the same contract as a ``Protocol``, which the drain's
signatures name, so that the drain can use nothing else.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Literal, Protocol

from buffer import stats
from buffer.core import BufferCore, require
from buffer.values import (
    AckedClaim,
    AckResult,
    BeatLease,
    Candidate,
    Entry,
    LeasedRound,
    RoundCandidates,
    RoundStart,
    parse_leased,
    parse_tags,
)

log = logging.getLogger("buffer.buffer")  # the name operators' log filters already use


CLOCK_REREAD_MS = 1000  # how long ``server_time_ms`` runs on one reading of Redis's TIME


class DrainSide(BufferCore):
    """The buffer as ``drainer/`` uses it."""

    _clock_anchor: tuple[int, int] | None = None  # (Redis TIME in ms, monotonic ns when it arrived)
    _clock_last = 0  # the last ``server_time_ms`` answer: it never goes backwards

    def round_candidates(self, shard: int, *, max_orgs: int) -> RoundCandidates:
        """The next round's envs — up to ``max_orgs`` orgs after the org cursor, one env each after its env
        cursor, with their depths — in one script call that also advances the cursors (``lua/candidates.lua``)."""
        require("max_orgs", max_orgs, 1)
        k = self.keys(shard)
        flat = self._scripts.candidates(
            keys=[k.orgs, k.cursor_orgs, k.cursor_envs, k.paused_orgs, k.paused_envs], args=[k.base, max_orgs]
        )
        return _candidates(flat)

    def start_round(
        self, shard: int, *, now_ms: int, reclaim_limit: int, promote_limit: int, max_orgs: int
    ) -> RoundStart:
        """What a drain round does before its lease, in one pipelined round trip instead of three:
        ``reclaim_expired``, ``promote_due`` and ``round_candidates``, in that order, each still its own atomic
        script (as three calls, nothing ran between them either way that the drain relies on: each script
        keeps the shard consistent on its own). Measured at 2 ms RTT in docs/operations.md#round-trips."""
        require("reclaim_limit", reclaim_limit, 1)
        require("promote_limit", promote_limit, 1)
        require("max_orgs", max_orgs, 1)
        k = self.keys(shard)
        pipe = self._client.pipeline(transaction=False)
        self._scripts.reclaim_expired(keys=[k.leases, k.retry], args=[k.base, now_ms, reclaim_limit], client=pipe)
        self._scripts.promote_due(keys=[k.retry, k.orgs], args=[k.base, now_ms, promote_limit], client=pipe)
        self._scripts.candidates(
            keys=[k.orgs, k.cursor_orgs, k.cursor_envs, k.paused_orgs, k.paused_envs], args=[k.base, max_orgs],
            client=pipe,
        )  # fmt: skip
        reclaimed, promoted, flat = pipe.execute()
        return RoundStart(_reclaimed(reclaimed), int(promoted), _candidates(flat))

    def lease(self, shard: int, *, org_id: int, env_id: int, n: int, now_ms: int, lease_ms: int) -> list[Entry]:
        """Pop up to ``n`` entries of one env, FIFO, as LEASED until ``now_ms + lease_ms``."""
        require("n", n, 1)
        require("lease_ms", lease_ms, 1)
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
        require("lease_ms", lease_ms, 1)
        require("max_bytes", max_bytes, 0)
        if not picks:
            return LeasedRound([], [])
        calls: list[tuple[list[str], list[str | int]]] = []
        for org_id, env_id, n in picks:
            require("n", n, 1)
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
        require("lease_ms", lease_ms, 1)
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
        require("grace_ms", grace_ms, 0)
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
        tagged = [(run, parse_tags(tags)) for run, _, _, tags in groups if tags]
        return AckResult(int(reply[0]), cancelled, tagged)

    def requeue(
        self, shard: int, run_id: str, *, now_ms: int, delay_ms: int, error: str, to_tail: bool = False
    ) -> int | None:
        """A retryable failure: attempts + 1, wait in ``retry`` until ``now_ms + delay_ms``, then back to the
        head of its queue — or, ``to_tail``, to its tail (a write that timed out must not hold up the rest).

        Returns the new attempts count, or ``None`` if the run was no longer leased (nothing changed).
        """
        require("delay_ms", delay_ms, 0)
        k = self.keys(shard)
        args: list[str | int] = [k.base, run_id, now_ms, delay_ms, error, *(["tail"] if to_tail else [])]
        attempts = self._scripts.requeue(keys=[k.leases, k.retry], args=args)
        return None if attempts < 0 else attempts

    def promote_due(self, shard: int, *, now_ms: int, limit: int) -> int:
        """Move up to ``limit`` due retries to the head of their queues (those requeued ``to_tail``: to the
        tail). Returns how many moved."""
        require("limit", limit, 1)
        k = self.keys(shard)
        return int(self._scripts.promote_due(keys=[k.retry, k.orgs], args=[k.base, now_ms, limit]))

    def reclaim_expired(self, shard: int, *, now_ms: int, limit: int) -> list[tuple[str, int]]:
        """Expired leases (deadline <= now_ms) → retry, due now, attempts + 1. Returns (run id, attempts)."""
        require("limit", limit, 1)
        k = self.keys(shard)
        return _reclaimed(self._scripts.reclaim_expired(keys=[k.leases, k.retry], args=[k.base, now_ms, limit]))

    def release(self, shard: int, run_ids: Sequence[str]) -> int:
        """Leased entries back to their queue heads in the given order, attempts unchanged (Postgres down)."""
        if not run_ids:
            return 0
        k = self.keys(shard)
        return int(self._scripts.release(keys=[k.leases, k.orgs], args=[k.base, *run_ids]))

    def dead_letter(self, shard: int, run_id: str, *, now_ms: int, reason: str) -> bool:
        """Park an entry as DEAD for operators (kept, no TTL). ``False`` if missing, DEAD or ACKED."""
        k = self.keys(shard)
        keys = [k.leases, k.retry, k.dead, k.orgs]
        return int(self._scripts.dead_letter(keys=keys, args=[k.base, run_id, now_ms, reason])) == 1

    def count_drained(self, shard: int, count: int, *, now_ms: int) -> None:
        """Count ``count`` entries that left the buffer (acked or dead-lettered) in the shard's drain rate and,
        if any left, record ``now_ms`` as the shard's last drain progress (the same script: no extra round trip,
        and nothing written on an idle shard)."""
        require("count", count, 0)
        if count == 0:
            return
        k = self.keys(shard)
        keys = [k.drained(stats.bucket_of(now_ms)), k.drain_progress, k.drained_total]
        self._scripts.count_drained(keys=keys, args=[count, stats.BUCKET_TTL_MS, now_ms])  # runs at maxmemory too

    # -- the outage circuit, the clock, the epochs ----------------------------------------------------------

    def server_time_ms(self) -> int:
        """Redis's clock (``TIME``) in epoch ms: the one clock every drainer shares, so a worker whose own
        clock runs ahead cannot reclaim another's live leases.

        Read once per ``CLOCK_REREAD_MS`` (and on first use); between reads it is that reading plus this
        process's monotonic clock since, so a drain round does not pay a round trip for it (one of eight,
        docs/operations.md#round-trips). The reading is taken when the reply arrives, so the clock lags
        Redis's by at most one round trip — late, the safe side for a reclaim — plus the monotonic clock's
        drift over a second (parts per million). It never goes backwards."""
        mono = time.monotonic_ns()
        anchor = self._clock_anchor
        if anchor is not None and mono - anchor[1] < CLOCK_REREAD_MS * 1_000_000:
            now = anchor[0] + (mono - anchor[1]) // 1_000_000
        else:
            seconds, micros = self._client.time()
            now = int(seconds) * 1000 + int(micros) // 1000
            self._clock_anchor = (now, time.monotonic_ns())
        now = max(now, self._clock_last)
        self._clock_last = now
        return now

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
        require("base_ms", base_ms, 1)
        require("max_ms", max_ms, base_ms)
        delay, _failures = self._scripts.open_circuit(
            keys=[self.keys(shard).drain_circuit], args=[now_ms, base_ms, max_ms]
        )
        return int(delay)

    def close_circuit(self, shard: int) -> None:
        """A round reached Postgres: forget the outage streak."""
        self._client.delete(self.keys(shard).drain_circuit)

    # -- locks and the fan-out -------------------------------------------------------------------------------

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
        require("ttl_ms", ttl_ms, 1)
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

    def hold_send(self, shard: int, *, ttl_ms: int) -> None:
        """A shard task holds its lock and drains: it keeps the shard's mark for ``ttl_ms`` (its lock's
        lifetime), so accepts meanwhile kick nothing (``lua/hold_send.lua``, docs/architecture.md#kick)."""
        require("ttl_ms", ttl_ms, 1)
        self._scripts.hold_send(keys=[self.keys(shard).drain_sent], args=[ttl_ms])

    def next_send(self, shard: int, *, now_ms: int, ttl_ms: int, progressed: bool) -> bool:
        """A shard task that drained ends: True if the shard still has work due and the mark is kept for a
        successor (the caller sends it), False if the mark is dropped (the next accept kicks). A task that
        made no progress always drops it, so a shard it cannot drain waits for the tick instead of looping
        (``lua/next_send.lua``, docs/architecture.md#kick)."""
        require("ttl_ms", ttl_ms, 1)
        k = self.keys(shard)
        kept = self._scripts.next_send(
            keys=[k.drain_sent, k.orgs, k.retry, k.leases], args=[now_ms, ttl_ms, "1" if progressed else "0"]
        )
        return int(kept) == 1

    def mark_fan_out_tick(self, *, now_ms: int, chart_every_ms: int = 0) -> bool:
        """The fan-out ticked at ``now_ms``: one script call on shard 0's keys (one round trip per tick, the only
        idle cost of the liveness record). Read by ``Buffer.fan_out_last_tick_ms`` for the tick-age gauge. A
        script (``lua/mark_tick.lua``), so that it runs at maxmemory too: the fan-out comes after it.

        ``chart_every_ms`` > 0: the same call also asks whether this tick takes the dashboard's next chart
        sample (a SET NX PX of ``chart:due``: one tick per interval wins, however many beats or workers tick).
        Returns ``True`` when it does (``Buffer.record_chart_samples``); always ``False`` with 0."""
        require("chart_every_ms", chart_every_ms, 0)
        k = self.keys(0)
        return int(self._scripts.mark_tick(keys=[k.fan_out_tick, k.chart_due], args=[now_ms, chart_every_ms])) == 1

    # -- the beat lease (docs/architecture.md#beat-lease) -------------------------------------------------------

    def take_beat_lease(self, holder: str, *, held_epoch: int, ttl_ms: int, now_ms: int) -> BeatLease:
        """Renew the beat lease if ``holder`` still holds it under ``held_epoch``, take it if it is free (a
        new, larger epoch), else leave it: returns the lease after the call (``lua/beat_lease.lua``)."""
        require("held_epoch", held_epoch, 0)
        require("ttl_ms", ttl_ms, 1)
        if not holder:
            raise ValueError("holder must be non-empty")
        k = self.keys(0)
        epoch, current = self._scripts.beat_lease(
            keys=[k.beat_lease, k.beat_epoch], args=[holder, held_epoch, ttl_ms, now_ms]
        )
        return BeatLease(holder=str(current), epoch=int(epoch))

    def release_beat_lease(self, holder: str, *, epoch: int) -> bool:
        """Give the lease up (a clean shutdown) if it is still ``holder``'s taking ``epoch``."""
        return bool(self._scripts.beat_release(keys=[self.keys(0).beat_lease], args=[holder, epoch]))

    def beat_epoch(self) -> int:
        """The latest epoch the beat lease was taken under (0: never): a message sent under a smaller one came
        from a beat that has lost the lease since."""
        return int(self._client.get(self.keys(0).beat_epoch) or 0)

    def heartbeat(self, worker: str, *, now_ms: int, prune_before_ms: int) -> int:
        """Drain worker ``worker`` is alive at ``now_ms`` (``lua/heartbeat.lua``, one round trip); workers not
        heard from since ``prune_before_ms`` are forgotten. Returns how many were. Read by ``Buffer.drain_workers``."""
        k = self.keys(0)
        return int(self._scripts.heartbeat(keys=[k.drain_workers], args=[worker, now_ms, prune_before_ms]))

    def forget_worker(self, worker: str) -> None:
        """``worker`` shut down cleanly: it leaves the list rather than turning stale there."""
        self._client.hdel(self.keys(0).drain_workers, worker)


def _candidates(flat: list[Any]) -> RoundCandidates:
    """``lua/candidates.lua``'s reply: covers-all flag, then (org, env, depth) triples."""
    picks = [Candidate(int(flat[i]), int(flat[i + 1]), int(flat[i + 2])) for i in range(1, len(flat), 3)]
    return RoundCandidates(picks, covers_all=flat[0] == 1)


def _reclaimed(flat: list[Any]) -> list[tuple[str, int]]:
    """``lua/reclaim_expired.lua``'s reply: run id, attempts, run id, …"""
    return [(run_id, int(attempts)) for run_id, attempts in zip(flat[::2], flat[1::2], strict=True)]


class DrainBuffer(Protocol):
    """The drain's contract with the buffer: ``drainer/`` names this type, never ``Buffer``, so that mypy refuses
    a drain that reaches for an operator's or the trigger path's operation. ``DrainSide`` (hence ``Buffer``)
    satisfies it; each method does what the ``DrainSide`` method of its name says."""

    @property
    def prefix(self) -> str: ...  # the buffer's KEY_PREFIX: the epochs' records are per prefix

    # -- a round
    def round_candidates(self, shard: int, *, max_orgs: int) -> RoundCandidates: ...
    def start_round(
        self, shard: int, *, now_ms: int, reclaim_limit: int, promote_limit: int, max_orgs: int
    ) -> RoundStart: ...
    def lease_round(
        self, shard: int, picks: Sequence[tuple[int, int, int]], *, now_ms: int, lease_ms: int, max_bytes: int
    ) -> LeasedRound: ...
    def lease_solo(self, shard: int, *, org_id: int, env_id: int, now_ms: int, lease_ms: int) -> Entry | None: ...
    def ack(
        self, shard: int, run_ids: Sequence[str], *, now_ms: int, grace_ms: int, claims: Sequence[AckedClaim] = ()
    ) -> AckResult: ...
    def requeue(
        self, shard: int, run_id: str, *, now_ms: int, delay_ms: int, error: str, to_tail: bool = False
    ) -> int | None: ...
    def promote_due(self, shard: int, *, now_ms: int, limit: int) -> int: ...
    def reclaim_expired(self, shard: int, *, now_ms: int, limit: int) -> list[tuple[str, int]]: ...
    def release(self, shard: int, run_ids: Sequence[str]) -> int: ...
    def dead_letter(self, shard: int, run_id: str, *, now_ms: int, reason: str) -> bool: ...
    def count_drained(self, shard: int, count: int, *, now_ms: int) -> None: ...

    # -- the clock, the epochs, the outage circuit
    def server_time_ms(self) -> int: ...
    def epochs(self, candidate: str) -> list[tuple[str, bool]]: ...
    def circuit_until_ms(self, shard: int) -> int: ...
    def open_circuit(self, shard: int, *, now_ms: int, base_ms: int, max_ms: int) -> int: ...
    def close_circuit(self, shard: int) -> None: ...

    # -- the lock and the fan-out
    def shard_lock(
        self, shard: int, kind: Literal["drain", "sweep"], *, timeout_s: float
    ) -> AbstractContextManager[bool]: ...
    def shard_has_work(self, shards: Iterable[int] | None = None) -> list[bool]: ...
    def claim_sends(self, shards: Sequence[int], *, ttl_ms: int) -> list[int]: ...
    def clear_send(self, shard: int) -> None: ...
    def mark_fan_out_tick(self, *, now_ms: int, chart_every_ms: int = 0) -> bool: ...

    # -- the beat lease
    def take_beat_lease(self, holder: str, *, held_epoch: int, ttl_ms: int, now_ms: int) -> BeatLease: ...
    def release_beat_lease(self, holder: str, *, epoch: int) -> bool: ...
    def beat_epoch(self) -> int: ...
    def heartbeat(self, worker: str, *, now_ms: int, prune_before_ms: int) -> int: ...
    def forget_worker(self, worker: str) -> None: ...
    def hold_send(self, shard: int, *, ttl_ms: int) -> None: ...
    def next_send(self, shard: int, *, now_ms: int, ttl_ms: int, progressed: bool) -> bool: ...


_DRAIN_SIDE_IS_A_DRAIN_BUFFER: type[DrainBuffer] = DrainSide  # mypy checks it: the contract names only DrainSide's
