"""Drain one shard: lease buffered snapshots fairly and materialise them in bulk (docs/architecture.md#drain).

``drain_shard`` runs inside the shard's lock (``drainer.tasks``) and loops within its time budget:
reclaim expired leases, promote due retries, run one fair round, until the shard is empty, the budget
is spent, or Postgres is unreachable (then the shard's circuit opens: 100 ms doubling to 5 s).

A round: the buffer names the candidates (orgs after the durable cursor, one env each, their depths:
``Buffer.round_candidates``), ``drainer.fairness`` splits ``ROUND_BUDGET`` among them, the round leases
its shares, then ``materialise`` writes every leased entry and acks only what committed. Every Redis
access goes through the buffer's drain contract (``buffer.drain_side.DrainBuffer``, which ``Buffer`` satisfies);
this module decides over the values it returns.

Race analysis — every crash point and what it costs
---------------------------------------------------
1. Killed after ``lease``, before the commit: nothing was written. The lease expires (``LEASE_MS``),
   ``reclaim_expired`` moves the entry to ``retry`` with attempts + 1, the next round writes it.
   Cost: one lease period of delay and one attempt.
2. Killed after the commit, before ``ack``: the rows exist. The lease expires, the entry is
   reclaimed and materialised again; ``ON CONFLICT DO NOTHING`` makes that a no-op (EXISTED) and the
   entry is acked. Cost: delay only — never a second row. Attempts can be exhausted this way; the
   SYSTEM_FAILURE insert is then also a no-op on the existing id, so the live row stands.
3. A lease that expires while its drainer is still working (Postgres very slow): another drainer
   reclaims and materialises the same entry; both inserts race on the primary key, one wins, the
   other sees EXISTED. ``ack`` of an entry already acked is a no-op. ``mollifier.E001`` keeps
   ``LEASE_MS`` above the drain time budget so this needs a stall, not just a busy shard. While the
   reclaimed entry was QUEUED, a tag, reschedule or metadata set may have been answered on it (the first
   drainer's row was not visible yet); the row that wins may lack it, so an EXISTED entry that carries
   overrides has them applied to the row before its ack (``engine.apply_overrides``: tags appended, delay
   and metadata only onto a row nobody changed since it was written).
4. Two drainers on one shard: the shard lock admits one. If a lock expired under a stalled holder,
   ``lease`` is still an atomic LPOP, so the two get disjoint entries.
5. Cancel during drain: a cancel that lands before the lease makes a CANCELED row. One that lands
   while the entry is leased sets the flag too late for this round: the row is written live and the
   API (which waits for the row, docs/architecture.md#reads-and-mutations-of-buffered-runs) cancels it in Postgres. If that lease then expires, the
   reclaimed entry carries the flag, ``create_cancelled_run`` hits ``CancelConflict`` and
   ``cancel_run`` is applied: cancel wins either way.
6. Postgres outage mid-round: everything not yet committed goes back to the queue head with attempts
   unchanged (``release``); what did commit is acked. No SYSTEM_FAILURE row comes from an outage.
7. Redis unreachable mid-round after the commit: the ack is lost, which is case 2.
8. Killed while the next round was leased ahead (the lease thread): its entries are leased and
   uncommitted, which is case 1 for them, and case 1 or 2 for the round that was committing. An outage in
   round n releases round n + 1 too, behind round n's entries, so each queue keeps its order (case 6).
9. Frozen (SIGSTOP, a paused VM) inside the materialise transaction, holding the row locks of what it
   wrote. Its shard lock (``drainer.tasks.shard_lock_ms``) expires before its leases: another task drains
   the rest of the shard meanwhile. Its session idles in the transaction, and Postgres ends it after
   ``idle_in_transaction_session_timeout`` (half the lease, ``engine.bounded_statements``): the rows roll
   back and the locks go before the leases expire, so the reclaim (case 1) writes those entries without
   waiting on anything. Woken, the worker's COMMIT fails (25P03, classified with outages): nothing is
   acked — ``state.acks`` holds only what committed — and what is still leased is released (case 6; an
   entry re-leased meanwhile by another drainer is then written twice, one row by ON CONFLICT). A
   freeze late in a slow round can outlast the lease before the session ends; the reclaimed entry's write
   then waits on the frozen rows until the lock or statement timeout, and is requeued to the tail of its
   queue (``to_tail``), so it never blocks the entries behind it twice. If it wakes before the session is
   ended, its commit succeeds: case 3.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from buffer.drain_side import DrainBuffer
from buffer.values import AckedClaim, Entry, LeasedRound, RoundCandidates
from drainer import fairness, metrics, telemetry
from drainer.limits import DrainLimits
from drainer.report import Report
from mollifier_project.clock import from_ms, now_ms
from runs import engine, overrides, request_keys
from runs.db_errors import Failure, classify, lock_timed_out, timed_out
from runs.snapshot import Snapshot, SnapshotError, from_snapshot

log = logging.getLogger(__name__)

RECLAIM_LIMIT = 1000
PROMOTE_LIMIT = 1000
RETRY_BASE_MS = 500
RETRY_MAX_MS = 30_000
CIRCUIT_BASE_MS = 100
CIRCUIT_MAX_MS = 5_000
ISOLATE_LOCK_MS = 100  # the lock wait of each entry written alone after its round's bulk write timed out on a lock

_Failed = tuple[Entry, Snapshot | None, str]
"""An entry that gets a failure row: its snapshot if it could be read, and why it failed."""


class _Outage(Exception):
    """Postgres is unreachable: stop the round, release what is not committed."""


# ------------------------------------------------------------------------------------------- shard


def drain_shard(
    buffer: DrainBuffer,
    *,
    shard: int,
    limits: DrainLimits,
    clock: Callable[[], int] = now_ms,
    sleep: Callable[[float], None] = time.sleep,
) -> Report:
    """Drain ``shard`` until it is empty or ``limits.time_budget_ms`` is spent. Call with the shard lock held.

    Steps per iteration: 1. respect an open circuit; 2. reclaim expired leases; 3. promote due retries;
    4. one fair round; 5. on an outage open the circuit (and wait it out if the budget allows), on
    success close it; stop when a round leased nothing or emptied the shard (``Report.emptied``).

    With ``limits.lease_ahead``, steps 1–3 and the lease of round n + 1 run on a second thread while
    round n writes and commits (Redis work overlapping Postgres work; the thread never touches
    Postgres). Round n is still acked only after its own commit; a leased-ahead round is always
    finished, even past the budget.
    """
    report = Report()
    start = clock()
    unread: int | None = start  # the first iteration's "now": one TIME round trip fewer for a one-round task
    ahead: Future[_Leased] | None = None  # the next round, leased while this one commits
    # Until when the shard's circuit is open: read once, then as this task opens and closes it (only the shard
    # lock's holder does; a second holder after a lock expiry at worst tries one round into an outage it did
    # not see, which opens the circuit again) — one round trip per task instead of one per round.
    circuit: int | None = None
    with ThreadPoolExecutor(
        max_workers=1, thread_name_prefix=f"drain-{shard}-lease"
    ) as pool:  # a thread on first use only
        while True:
            if ahead is not None:  # leased already (its circuit check came before): finish it, whatever the time
                leased, ahead = ahead.result(), None
                until = 0
            else:
                now, unread = (unread if unread is not None else clock()), None
                if now - start >= limits.time_budget_ms:
                    break
                if circuit is None:
                    circuit = buffer.circuit_until_ms(shard)
                until = circuit
                if until > now:
                    wait_ms = until - now
                    if now + wait_ms - start >= limits.time_budget_ms:
                        report.circuit_open = True
                        break
                    sleep(wait_ms / 1000)
                    continue
                leased = _lease_next(buffer, shard=shard, limits=limits, now_ms=now)
            report.reclaimed += leased.reclaimed
            if limits.lease_ahead and not leased.last and clock() - start < limits.time_budget_ms:
                ahead = pool.submit(_lease_ahead, buffer, shard=shard, limits=limits, clock=clock)
            result = _finish_round(buffer, shard=shard, limits=limits, leased=leased, ahead=ahead)
            if result.outage:
                ahead = None  # released with this round's entries (``materialise``), in lease order
            report.add(result)
            stop, circuit = _stop_after(
                buffer, report, result, shard=shard, until=until, circuit=circuit, limits=limits, start=start,
                clock=clock,
            )  # fmt: skip
            if stop:
                break
    return report


def _stop_after(
    buffer: DrainBuffer, report: Report, result: Report, *, shard: int, until: int, circuit: int | None,
    limits: DrainLimits, start: int, clock: Callable[[], int],
) -> tuple[bool, int | None]:  # fmt: skip
    """After a round: open the circuit on an outage (and keep going: the next iteration waits it out), close
    it when the round reached Postgres after one, stop when the round leased nothing or emptied the shard.
    Returns whether to stop, and until when the circuit is open now (``circuit`` as the loop knew it, changed)."""
    if result.outage:
        now = clock()
        delay = buffer.open_circuit(shard, now_ms=now, base_ms=CIRCUIT_BASE_MS, max_ms=CIRCUIT_MAX_MS)
        log.warning("postgres unreachable; shard %s backs off %s ms", shard, delay, extra={"shard": shard})
        return False, now + delay
    if until:  # the circuit was open and this round reached Postgres: close it
        buffer.close_circuit(shard)
        circuit = 0
    if result.leased == 0 or result.emptied:
        report.emptied = result.emptied
        return True, circuit
    return False, circuit


# ------------------------------------------------------------------------------------------- round


def choose(buffer: DrainBuffer, *, shard: int, limits: DrainLimits) -> list[tuple[int, int, int]]:
    """This round's (org, env, how many) — two-level round robin plus a max-min split of the budget.

    Advances the durable cursors: the org cursor by one org per round, each chosen org's env cursor
    by one env.
    """
    return _plan(buffer, shard=shard, limits=limits)[0]


def _plan(buffer: DrainBuffer, *, shard: int, limits: DrainLimits) -> tuple[list[tuple[int, int, int]], bool]:
    """``choose``, and whether the picks cover everything queued in the shard right now (every org
    chosen, each with a single queued env, each share equal to its env's demand)."""
    return _split(buffer.round_candidates(shard, max_orgs=limits.max_orgs_per_round), limits)


def _split(found: RoundCandidates, limits: DrainLimits) -> tuple[list[tuple[int, int, int]], bool]:
    """``_plan`` over candidates already read."""
    demands = [c.depth for c in found.picks]
    shares = fairness.max_min_split(limits.round_budget, demands)
    covers_all = found.covers_all and shares == demands
    picks = [(c.org_id, c.env_id, n) for c, n in zip(found.picks, shares, strict=True) if n > 0]
    return picks, covers_all


def run_round(buffer: DrainBuffer, *, shard: int, limits: DrainLimits, now_ms: int) -> Report:
    """Lease this round's entries and materialise them (no reclaim, no promote: ``drain_shard`` does those).

    Steps: 1. plan the picks; 2. lease them, each env's snapshots within its share of
    ``round_max_bytes`` (at least one entry each), so a round of huge payloads cannot exhaust the
    worker's memory; 3. materialise and ack; 4. then lease and materialise, one at a time, each queue
    head marked solo (its last lease expired: it may be what killed the worker), so it cannot take a
    round of other tenants' entries down with it again.
    """
    return _finish_round(buffer, shard=shard, limits=limits, leased=_lease(buffer, shard=shard, limits=limits,
                                                                            now_ms=now_ms), ahead=None)  # fmt: skip


@dataclass
class _Leased:
    """Steps 1–2 of a round: what it leased, and whether that is everything the shard had queued."""

    now_ms: int
    picks: list[tuple[int, int, int]]
    covers_all: bool
    round: LeasedRound
    reclaimed: int = 0

    @property
    def took_all(self) -> bool:
        return len(self.round.entries) == sum(n for _, _, n in self.picks) and not self.round.solo_waiting

    @property
    def last(self) -> bool:
        """No round should follow: this one takes everything queued, leased nothing, or has solo heads
        (leased one at a time after it, so nothing is leased ahead of them)."""
        return (self.covers_all and self.took_all) or not self.round.entries or bool(self.round.solo_waiting)


def _lease(
    buffer: DrainBuffer, *, shard: int, limits: DrainLimits, now_ms: int, found: RoundCandidates | None = None
) -> _Leased:
    picks, covers_all = _plan(buffer, shard=shard, limits=limits) if found is None else _split(found, limits)
    per_env_bytes = max(1, limits.round_max_bytes // len(picks)) if picks else 0
    leased = buffer.lease_round(shard, picks, now_ms=now_ms, lease_ms=limits.lease_ms, max_bytes=per_env_bytes)
    return _Leased(now_ms, picks, covers_all, leased)


def _lease_next(buffer: DrainBuffer, *, shard: int, limits: DrainLimits, now_ms: int) -> _Leased:
    """Reclaim expired leases, promote due retries, then lease the next round: all Redis, no Postgres — two
    round trips (``Buffer.start_round``, then the lease)."""
    started = buffer.start_round(
        shard, now_ms=now_ms, reclaim_limit=RECLAIM_LIMIT, promote_limit=PROMOTE_LIMIT,
        max_orgs=limits.max_orgs_per_round,
    )  # fmt: skip
    metrics.RECLAIMED.inc(len(started.reclaimed))
    leased = _lease(buffer, shard=shard, limits=limits, now_ms=now_ms, found=started.candidates)
    leased.reclaimed = len(started.reclaimed)
    return leased


def _lease_ahead(buffer: DrainBuffer, *, shard: int, limits: DrainLimits, clock: Callable[[], int]) -> _Leased:
    """``_lease_next`` on the lease thread while the current round commits (docs/architecture.md#drain-throughput).
    An open circuit means no round: an empty one is returned, and the loop waits the circuit out."""
    now = clock()
    if buffer.circuit_until_ms(shard) > now:
        return _Leased(now, [], False, LeasedRound([], []))
    return _lease_next(buffer, shard=shard, limits=limits, now_ms=now)


def _finish_round(
    buffer: DrainBuffer, *, shard: int, limits: DrainLimits, leased: _Leased, ahead: Future[_Leased] | None
) -> Report:
    """Steps 3–4 of a round. ``ahead`` is the next round, being leased meanwhile: on an outage its
    entries are released behind this round's, so every queue keeps its order."""

    def ahead_ids() -> list[str]:
        return [e.run_id for e in ahead.result().round.entries] if ahead is not None else []

    entries = leased.round.entries
    report = materialise(
        buffer, shard=shard, entries=entries, limits=limits, now_ms=leased.now_ms, also_release=ahead_ids
    )
    for org_id, env_id in leased.round.solo_waiting:
        if report.outage:
            break
        now_ms = leased.now_ms
        alone = buffer.lease_solo(shard, org_id=org_id, env_id=env_id, now_ms=now_ms, lease_ms=limits.lease_ms)
        if alone is not None:
            report.add(materialise(buffer, shard=shard, entries=[alone], limits=limits, now_ms=now_ms))
    report.rounds = 1
    report.emptied = leased.covers_all and leased.took_all and not report.outage
    return report


# ------------------------------------------------------------------------------------- materialise


@dataclass
class _Round:
    """Bookkeeping for one round: which leased entries are resolved, and how."""

    buffer: DrainBuffer
    shard: int
    limits: DrainLimits
    now_ms: int
    report: Report
    pending: dict[str, Entry] = field(default_factory=dict)  # leased, not yet resolved; insertion order = lease order
    acks: list[str] = field(default_factory=list)

    def ack(self, entry: Entry) -> None:
        self.pending.pop(entry.run_id, None)
        self.acks.append(entry.run_id)

    def requeue(self, entry: Entry, error: str, *, to_tail: bool = False) -> None:
        """Transient failure: back off and try again — behind the rest of its queue (``to_tail``) when the
        write timed out, so it cannot stand in their way again."""
        self.pending.pop(entry.run_id, None)
        delay = min(RETRY_MAX_MS, RETRY_BASE_MS * 2**entry.attempts)
        attempts = self.buffer.requeue(
            self.shard, entry.run_id, now_ms=self.now_ms, delay_ms=delay, error=error, to_tail=to_tail
        )
        if attempts is not None:
            self.report.requeued += 1
            log.warning("requeued run %s (attempt %s): %s", entry.run_id, attempts, error, extra=_ids(entry))


def _ids(entry: Entry) -> dict[str, Any]:
    return {"run_id": entry.run_id, "env_id": entry.env_id, "org_id": entry.org_id}


def _parse(entry: Entry) -> Snapshot:
    if entry.snapshot_error is not None:  # a stored value the buffer could not read back (corrupt)
        raise SnapshotError(entry.snapshot_error)
    snapshot = from_snapshot(entry.snapshot)
    if (snapshot.env_id, snapshot.org_id) != (entry.env_id, entry.org_id) or snapshot.id != entry.run_id:
        raise SnapshotError("snapshot does not match its buffer entry (run, env or org differ)")
    return overrides.effective(snapshot, entry)  # appended tags, a rescheduled delay, replaced metadata


def _minimal_snapshot(entry: Entry) -> Snapshot:
    """Enough of an unreadable snapshot to write its SYSTEM_FAILURE row — keeping the batch link if any."""
    batch_id: str | None = None
    batch_index: int | None = None
    task = "unknown"
    try:
        doc = json.loads(entry.snapshot)
        if isinstance(doc, dict):
            if isinstance(doc.get("task"), str) and doc["task"]:
                task = doc["task"]
            if isinstance(doc.get("batch"), str) and isinstance(doc.get("batch_index"), int):
                batch_id, batch_index = doc["batch"], doc["batch_index"]
    except (ValueError, RecursionError):
        pass
    return Snapshot(
        id=entry.run_id, env_id=entry.env_id, org_id=entry.org_id, task_identifier=task,
        created_at=from_ms(entry.accepted_ms), batch_id=batch_id, batch_index=batch_index,
    )  # fmt: skip


def materialise(
    buffer: DrainBuffer,
    *,
    shard: int,
    entries: Sequence[Entry],
    limits: DrainLimits,
    now_ms: int,
    fail_with: str | None = None,
    also_release: Callable[[], Sequence[str]] | None = None,
) -> Report:
    """Write a row for every leased entry and ack it after the commit (docs/architecture.md#drain-outcomes).

    Steps: 1. sort entries into normal / cancelled / failed (unreadable snapshot, attempts exhausted);
    2. ``materialise_many`` the normal ones in one transaction; 3. CANCELED rows; 4. SYSTEM_FAILURE rows
    (dead-letter when even that is impossible); 5. ack what committed — or, on an outage, release
    everything still pending with attempts unchanged — and, after them, ``also_release()``: the next
    round's entries when it was leased ahead (their lease must not outlive the outage).
    """
    state = _Round(buffer, shard, limits, now_ms, Report(leased=len(entries)))
    state.pending = {e.run_id: e for e in entries}
    keyed: dict[str, Snapshot] = {}  # runs with an idempotency key: the ack cuts their claims
    parsed: list[tuple[Entry, Snapshot]] = []
    normal: list[tuple[Entry, Snapshot]] = []
    cancelled: list[tuple[Entry, Snapshot]] = []
    failed: list[_Failed] = []
    duplicates: set[str] = set()
    for entry in entries:
        try:
            snapshot = _parse(entry)
        except SnapshotError as exc:
            failed.append((entry, None, f"unreadable snapshot: {exc}"))
            continue
        except Exception as exc:  # e.g. RecursionError on deep nesting: still unreadable, never a crash loop
            failed.append((entry, None, f"unreadable snapshot: {type(exc).__name__}: {exc}"))
            continue
        if snapshot.idempotency_key:
            keyed[entry.run_id] = snapshot
        parsed.append((entry, snapshot))
    try:
        duplicates = _superseded(state, parsed)
        for entry, snapshot in parsed:
            if entry.run_id in duplicates:
                continue
            if fail_with is not None:  # an operator's "fail": a SYSTEM_FAILURE row whatever the entry holds
                failed.append((entry, snapshot, fail_with))
            elif entry.cancelled_at_ms is not None:
                cancelled.append((entry, snapshot))
            elif entry.attempts >= limits.max_attempts:
                failed.append(
                    (entry, snapshot, f"gave up after {entry.attempts} attempts: {entry.last_error or 'lease expired'}")
                )
            else:
                normal.append((entry, snapshot))
        failed.extend(_materialise_normal(state, normal))
        for entry, snapshot in _cancelled_in_bulk(state, cancelled):
            _guarded(state, entry, snapshot, failed, functools.partial(_cancelled_row, state, entry, snapshot))
        for entry, maybe_snapshot, reason in failed:
            _failure_row(state, entry, maybe_snapshot, reason)
    except _Outage:
        state.report.outage = True
        engine.discard_connection()
        back = [*state.pending, *(also_release() if also_release is not None else ())]
        if back:
            state.report.released += buffer.release(shard, back)
            state.pending.clear()
    finally:
        if state.acks:
            claims = [
                AckedClaim(run, keyed[run].env_id, keyed[run].task_identifier, keyed[run].idempotency_key or "")
                for run in state.acks
                if run in keyed
            ]
            acked = buffer.ack(shard, state.acks, now_ms=now_ms, grace_ms=limits.ack_grace_ms, claims=claims)
            # CANCELED rows already; a duplicate has no row (its late mutations are dropped: _superseded)
            resolved = {entry.run_id for entry, _ in cancelled} | duplicates
            _cancel_late([flag for flag in acked.cancelled if flag[0] not in resolved])
            _tag_late(
                [t for t in acked.tagged if t[0] not in duplicates], {e.run_id: e for e in entries}, now_ms=now_ms
            )
    # Telemetry only (counters, dwell, drain rate, per-env log lines); never changes the round's result.
    telemetry.record_round(buffer, shard=shard, report=state.report, entries=entries, acked=state.acks, now_ms=now_ms)
    return state.report


def _superseded(state: _Round, parsed: list[tuple[Entry, Snapshot]]) -> set[str]:
    """Ack as duplicates, without a row, the round's keyed runs that a fail-open retry superseded: a trigger
    whose script ran but whose reply was lost (its web noted it: ``runs.request_keys.note_ambiguous``), then
    retried and written directly while its web could not reach Redis (docs/architecture.md#request-keys-across-an-outage).
    The client holds the retry's run; this entry's id never reached it, so mutations made on it meanwhile are
    dropped (logged). Returns their ids. One read per round (``EXISTS``, 0.1 ms) while no attempt was noted
    within ``REQUEST_KEY_TTL_S``; no write."""
    if not parsed:
        return set()
    try:
        held = request_keys.superseded([e.run_id for e, _ in parsed], ttl_s=state.limits.request_key_ttl_s)
    except Exception as exc:
        if classify(exc) is Failure.OUTAGE:
            raise _Outage from exc
        # Anything else must not stall the shard: the round is written as before this check existed.
        log.exception("could not look up the superseded attempts of a round of shard %s", state.shard)
        return set()
    entries = {e.run_id: e for e, _ in parsed}
    for run_id, holder in held.items():
        entry = entries[run_id]
        mutated = entry.cancelled_at_ms is not None or bool(entry.extra_tags)
        log.warning(
            "run %s is a duplicate of run %s (one request key): acked without a row%s", run_id, holder,
            "; its buffered cancel or tags are dropped" if mutated else "", extra={**_ids(entry), "holder": holder},
        )  # fmt: skip
        state.report.duplicate += 1
        state.ack(entry)
    return set(held)


def _tag_late(tagged: list[tuple[str, list[str]]], leased: dict[str, Entry], *, now_ms: int) -> None:
    """Tags appended after this round leased its entries — while leased, or after the lease expired and a
    reclaim made the entry QUEUED again (its client was told 200) — are missing from the rows just written:
    add them now. Tags the round already had are in the rows."""
    for run_id, tags in tagged:
        entry = leased.get(run_id)
        late = [tag for tag in tags if entry is None or tag not in entry.extra_tags]
        if not late or entry is None:
            continue
        try:
            outcome, _ = engine.add_tags(run_id, entry.env_id, late, now=from_ms(now_ms))
        except Exception:  # logged; the entry is acked and the rest of the round stands
            log.exception("could not apply the late tags of run %s", run_id, extra=_ids(entry))
            continue
        if outcome is not engine.TagsOutcome.ADDED:
            log.warning("late tags of run %s not applied: %s", run_id, outcome.value, extra=_ids(entry))


def _cancel_late(flagged: list[tuple[str, int, str | None]]) -> None:
    """Cancels that landed while their entries were leased: the rows just written are live, so cancel
    them now (rows already CANCELED or failed are terminal and stay as they are). Cancel wins."""
    for run_id, cancelled_at_ms, reason in flagged:
        try:
            engine.cancel_run(run_id, reason or "Canceled by user", from_ms(cancelled_at_ms))
        except Exception:  # the client was told 503 for this cancel and retries it against the row
            log.exception("could not apply the late cancel of run %s", run_id, extra={"run_id": run_id})


def _retry_or_fail(
    state: _Round, entry: Entry, snapshot: Snapshot | None, reason: str, failed: list[_Failed], *, to_tail: bool = False
) -> None:
    if entry.attempts + 1 < state.limits.max_attempts:
        state.requeue(entry, reason, to_tail=to_tail)
    else:
        failed.append((entry, snapshot, f"gave up after {entry.attempts + 1} attempts: {reason}"))


def _guarded(
    state: _Round, entry: Entry, snapshot: Snapshot | None, failed: list[_Failed], write: Callable[[], None]
) -> None:
    """Run one database write for ``entry`` and route its failure by class (docs/architecture.md#drain-outcomes)."""
    try:
        write()
    except Exception as exc:  # classified below; nothing is swallowed silently
        kind = classify(exc)
        if kind is Failure.OUTAGE:
            raise _Outage from exc
        reason = f"{type(exc).__name__}: {exc}".strip()
        if kind is Failure.RETRY:
            _retry_or_fail(state, entry, snapshot, reason, failed, to_tail=timed_out(exc))
        else:
            failed.append((entry, snapshot, reason))


def _materialise_normal(state: _Round, normal: list[tuple[Entry, Snapshot]]) -> list[_Failed]:
    """Bulk insert; on a non-outage error fall back to one entry at a time to isolate the culprit."""
    failed: list[_Failed] = []
    if not normal:
        return failed
    now = from_ms(state.now_ms)
    # First attempts of entries never leased before cannot have a row yet, unless a commit raced an
    # outage (released with attempts unchanged) — the engine checks the hint with the unique constraints.
    fresh = all(entry.attempts == 0 for entry, _ in normal)
    try:
        results = engine.materialise_many([s for _, s in normal], now=now, fresh=fresh)
    except Exception as exc:
        kind = classify(exc)
        if kind is Failure.OUTAGE:
            raise _Outage from exc
        if kind is Failure.RETRY and lock_timed_out(exc) and len(normal) > 1:
            # One row another session holds (a frozen drainer's, say) must not take its round-mates down:
            # write them one by one, each waiting at most ISOLATE_LOCK_MS, so only the held ones are requeued.
            log.warning("bulk materialise waited too long on a lock (%s); writing entries one by one", exc)
            with engine.lock_wait(ISOLATE_LOCK_MS):
                for entry, snapshot in normal:
                    _guarded(state, entry, snapshot, failed, functools.partial(_one, state, entry, snapshot, failed))
            return failed
        if kind is Failure.RETRY:
            for entry, snapshot in normal:
                reason = f"{type(exc).__name__}: {exc}".strip()
                _retry_or_fail(state, entry, snapshot, reason, failed, to_tail=timed_out(exc))
            return failed
        log.warning("bulk materialise failed (%s); isolating entries one by one", exc)
        for entry, snapshot in normal:
            _guarded(state, entry, snapshot, failed, functools.partial(_one, state, entry, snapshot, failed))
        return failed
    _apply_results(state, normal, results, failed)
    return failed


def _one(state: _Round, entry: Entry, snapshot: Snapshot, failed: list[_Failed]) -> None:
    _apply_results(state, [(entry, snapshot)], engine.materialise_many([snapshot], now=from_ms(state.now_ms)), failed)


def _apply_results(
    state: _Round, normal: list[tuple[Entry, Snapshot]], results: list[engine.Result], failed: list[_Failed]
) -> None:
    clashes: list[tuple[Entry, Snapshot, engine.Result]] = []
    carried: list[tuple[Entry, Snapshot, engine.Overrides]] = []
    for (entry, snapshot), result in zip(normal, results, strict=True):
        if result.outcome is engine.Outcome.CREATED:
            state.report.created += 1
            state.ack(entry)
        elif result.outcome is engine.Outcome.EXISTED:
            changes = overrides.carried(snapshot, entry)
            if changes is None:
                state.report.existed += 1
                state.ack(entry)
            else:
                carried.append((entry, snapshot, changes))
        elif result.outcome is engine.Outcome.INVALID:
            failed.append((entry, snapshot, result.reason or "invalid snapshot"))
        else:
            clashes.append((entry, snapshot, result))
    for entry, snapshot, changes in carried:
        _guarded(state, entry, snapshot, failed, functools.partial(_existed, state, entry, changes))
    for entry, snapshot, result in clashes:
        _guarded(
            state, entry, snapshot, failed, functools.partial(_resolve_clash, state, entry, snapshot, result, failed)
        )


def _existed(state: _Round, entry: Entry, changes: engine.Overrides | None) -> None:
    """The run's row was there already. If the entry carries overrides, the row may lack them: another
    drainer wrote it from an earlier lease (crash point 3) while a mutation answered on the reclaimed entry
    landed in the buffer. Apply them before the ack (``engine.apply_overrides`` merges, never clobbers)."""
    if changes is not None:
        skipped = engine.apply_overrides(entry.run_id, entry.env_id, changes, now=from_ms(state.now_ms))
        if skipped:
            log.warning(
                "run %s existed; its buffered %s could not be applied to the row", entry.run_id,
                ", ".join(skipped), extra=_ids(entry),
            )  # fmt: skip
    state.report.existed += 1
    state.ack(entry)


def _resolve_clash(
    state: _Round, entry: Entry, snapshot: Snapshot, result: engine.Result, failed: list[_Failed]
) -> None:
    """Another row holds this run's idempotency key although the trigger path claimed it for this run
    (the key was reset, or Redis lost the claim). This run was accepted and its id answered, so it must
    exist: the engine's key-clash policy takes the key over if it may be reused, else writes the run
    without it (``ClashPolicy.WITHOUT_KEY``)."""
    retry = engine.resolve_key_clash(
        snapshot, result, now=from_ms(state.now_ms), policy=engine.ClashPolicy.WITHOUT_KEY, buffered=True
    )
    if retry.outcome is engine.Outcome.CREATED:
        state.report.created += 1
        state.ack(entry)
    elif retry.outcome is engine.Outcome.EXISTED:
        _existed(state, entry, overrides.carried(snapshot, entry))
    else:
        failed.append(
            (entry, snapshot, retry.reason or f"idempotency key already belongs to run {retry.existing_run_id}")
        )


def _cancelled_in_bulk(state: _Round, cancelled: list[tuple[Entry, Snapshot]]) -> list[tuple[Entry, Snapshot]]:
    """CANCELED rows for the round's cancelled entries in one insert (a bulk-cancelled storm drains as fast
    as a normal one); returns the entries it did not write — an existing row, a key another run holds, a
    snapshot no row can hold, or the insert failed short of an outage — for ``_cancelled_row``, which
    resolves each one as before."""
    if len(cancelled) < 2:
        return cancelled
    flags = {
        s.id: (from_ms(e.cancelled_at_ms or state.now_ms), e.cancel_reason or "Canceled by user") for e, s in cancelled
    }
    try:
        results = engine.materialise_many([s for _, s in cancelled], now=from_ms(state.now_ms), cancelled=flags)
    except Exception as exc:
        if classify(exc) is Failure.OUTAGE:
            raise _Outage from exc
        return cancelled
    rest = []
    for (entry, snapshot), result in zip(cancelled, results, strict=True):
        if result.outcome is engine.Outcome.CREATED:
            state.report.cancelled += 1
            state.ack(entry)
        else:
            rest.append((entry, snapshot))
    return rest


def _cancelled_row(state: _Round, entry: Entry, snapshot: Snapshot) -> None:
    """Cancel wins: a CANCELED row — with its ``run_cancelled`` event, the only one this run gets (the
    buffer's cancel had no row to report) — or cancel the live row."""
    at = from_ms(entry.cancelled_at_ms or state.now_ms)
    reason = entry.cancel_reason or "Canceled by user"
    try:
        engine.create_cancelled_run(snapshot, at, reason, now=from_ms(state.now_ms))
    except engine.CancelConflict:
        engine.cancel_run(snapshot.id, reason, at)
    state.report.cancelled += 1
    state.ack(entry)


def _failure_row(state: _Round, entry: Entry, snapshot: Snapshot | None, reason: str) -> None:
    """SYSTEM_FAILURE row keeping the batch link; if even that cannot be written, dead-letter the entry.
    A transient database error requeues instead (the failure row is retried, not given up on)."""
    error = f"{engine.FAILURE_PREFIX} {reason}"
    try:
        result = engine.create_failed_run(snapshot or _minimal_snapshot(entry), error, now=from_ms(state.now_ms))
    except engine.InvalidRun as exc:
        _dead_letter(state, entry, f"{reason}; {exc}")
        return
    except Exception as exc:
        kind = classify(exc)
        if kind is Failure.OUTAGE:
            raise _Outage from exc
        if kind is Failure.RETRY:
            state.requeue(entry, f"{type(exc).__name__}: {exc}".strip(), to_tail=timed_out(exc))
            return
        _dead_letter(state, entry, f"{reason}; {type(exc).__name__}: {exc}")
        return
    if result.outcome is engine.Outcome.EXISTED:  # e.g. a crash after commit used up the attempts
        changes = overrides.carried(snapshot, entry) if snapshot is not None else None
        if changes is not None:  # the live row another drainer wrote may lack them (crash point 3)
            try:
                _existed(state, entry, changes)
                return
            except Exception as exc:
                if classify(exc) is Failure.OUTAGE:
                    raise _Outage from exc
                log.exception("could not apply the overrides of run %s to its row", entry.run_id, extra=_ids(entry))
        state.report.existed += 1
    else:
        state.report.failed += 1
        log.warning("run %s failed terminally: %s", entry.run_id, reason, extra=_ids(entry))
    state.ack(entry)


def _dead_letter(state: _Round, entry: Entry, reason: str) -> None:
    state.pending.pop(entry.run_id, None)
    state.buffer.dead_letter(state.shard, entry.run_id, now_ms=state.now_ms, reason=reason)
    state.report.dead += 1
    state.report.note_dead_reason(reason)
    log.error("dead-lettered run %s: %s", entry.run_id, reason, extra=_ids(entry))


def shards_with_work(buffer: DrainBuffer, *, offset: int) -> list[int]:
    """Shards that have queued, retrying or leased entries, rotated by ``offset`` over those shards.

    The rotation is over the busy shards only, so each of them leads the fan-out equally often. (Rotating
    over all shard numbers would let a busy shard that follows a run of idle ones lead once per idle
    neighbour as well: measured as a 2–3× share of the drain for some orgs, Jain 0.88 over 10 equal orgs.)
    """
    busy = [shard for shard, has_work in enumerate(buffer.shard_has_work()) if has_work]
    if not busy:
        return []
    start = offset % len(busy)
    return busy[start:] + busy[:start]
