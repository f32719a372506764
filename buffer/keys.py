"""The Redis key schema of the buffer and the gate (docs/architecture.md#the-redis-buffer). Nothing else in Python builds key strings.

Every key of shard *k* starts with ``<KEY_PREFIX>:{m<k>}:`` — the ``{m<k>}`` hash tag puts all of a shard's
keys in one Redis Cluster slot, so each Lua script touches one slot. The shard of an org is
``crc32(org_id) % SHARDS`` (``zlib.crc32``, never ``hash()``, which is salted per process), and every key of
an org's envs and runs lives in that org's shard.

Glossary (``B`` = ``<KEY_PREFIX>:{m<k>}:``):

=============================================  ======  ==============================================================
key                                            type    holds / written by
=============================================  ======  ==============================================================
``B orgs``                                     SET     orgs of the shard with a non-empty queue. accept, lease, ack,
                                                       promote_due, release, dead_letter, redrive (kept equal to queue
                                                       presence by every script)
``B org:<org>:envs``                           SET     envs of that org with a non-empty queue. same scripts
``B q:<env>``                                  LIST    run ids waiting, FIFO (RPUSH tail, LPOP head; promote_due and
                                                       release push back to the head). accept, lease, ack,
                                                       promote_due, release, dead_letter, redrive
``B e:<run>``                                  HASH    the entry (fields below). accept, trigger create it; lease, ack,
                                                       requeue, promote_due, reclaim_expired, release, dead_letter,
                                                       cancel, append_tags update it. No TTL except once ACKED.
``B s:<run>``                                  STRING  the entry's snapshot: the JSON byte-for-byte, or compressed
                                                       (``buffer.stored_snapshot``; kept out of the hash so the hash
                                                       stays listpack-encoded). accept creates it; get, lease, take,
                                                       env_page return it, ``Buffer.append_tags`` reads it; no
                                                       script decodes it; ack gives it the grace TTL (or deletes
                                                       it) with the hash
``B queued``                                   STRING  ids in the shard's env queues, together (= the sum of the
                                                       queues' LLENs). every script that pushes to or removes from
                                                       a queue (``lib/shard_counts.lua``); read by shard_stats
``B heads``                                    ZSET    ``<org>:<env>`` → accepted_ms of that env's queue head, one
                                                       member per non-empty queue. same scripts; shard_stats reads
                                                       the lowest for the oldest-age gauge
``B ix:<env>``                                 ZSET    run id → created_ms (its row's created_at) for every entry of
                                                       the env not yet acked (QUEUED, LEASED, DEAD). accept adds,
                                                       ack removes (``lib/env_index.lua``); ``Buffer.env_page``
                                                       pages it newest first
``B leases``                                   ZSET    leased run id → lease deadline ms. lease, ack, requeue,
                                                       reclaim_expired, release, dead_letter
``B retry``                                    ZSET    run id → not-before ms (requeued, waiting out a backoff).
                                                       requeue, reclaim_expired, promote_due, ack, dead_letter
``B dead``                                     ZSET    run id → dead-letter time ms, kept for operators. dead_letter,
                                                       redrive, ack
``B idem:<env>:<b64u(task)>:<name(key)>``      STRING  run id holding a task-level idempotency key: PX = the key's TTL
                                                       while its run is buffered, 60 s for a direct write (released
                                                       at commit), cut to the ack grace by ack; none for a trigger
                                                       that can never be buffered. accept, trigger, claim,
                                                       release_claim, ack. name(key) = ``claim_name``: b64u(key),
                                                       or ``~`` + b64u(sha256(key)) beyond 64 bytes
``B req:<env>:<b64u(task)>:<name(key)>``       STRING  run id for a request-level idempotency key (client retries).
                                                       trigger, claim, release_claim
``B fence:req``                                 STRING  "1" while every request key this shard should know is in it
                                                       (PX = REQUEST_KEY_FENCE_MS, refreshed by each keyed trigger;
                                                       absent: a Redis outage may have left keys only in Postgres).
                                                       trigger reads and refreshes it; ``Buffer.restore_request_keys``
                                                       sets it, ``Buffer.drop_request_fence`` deletes it
``B rate:<env>``                               HASH    gate fixed window: ``window`` (start ms), ``count``. trip,
                                                       trigger
``B tripped:<env>``                            STRING  ms until which the env is tripped. trip, trigger
``B cursor:orgs``                              STRING  drain fairness cursor over the shard's orgs. candidates
``B cursor:envs``                              HASH    org → drain fairness cursor over its envs. candidates
``B drain:lock``                               STRING  owner token of the shard task draining the shard (NX PX).
                                                       take_lock, released by release_claim (``Buffer.shard_lock``)
``B drain:sent``                               STRING  set while a drain task of the shard waits in the broker (NX PX);
                                                       with kicks on, also while it drains. claim_send, an accept's
                                                       kick (lib/drain_kick), hold_send, next_send; deleted by
                                                       ``Buffer.clear_send``
``B drain:circuit``                            HASH    Postgres-outage circuit: ``until_ms``, ``failures``. open_circuit,
                                                       ``Buffer.close_circuit``
``B drain:progress``                           STRING  ms (the drain's clock) of the shard's last drain round that acked
                                                       or dead-lettered ≥ 1 entry: the dashboard's "stuck" verdict and
                                                       the last-progress gauge. count_drained (written only when
                                                       something left, so an idle shard costs nothing); never expires
``B fan_out:tick``                             STRING  ms of the fan-out's last tick, on shard 0's base only (one key
                                                       for the buffer). ``Buffer.mark_fan_out_tick`` (mark_tick, runs at maxmemory;
                                                       one round trip per tick); read at scrape time
``B beat:lease``                               HASH    the celery beat allowed to send ticks: ``holder`` (host:pid),
                                                       ``epoch``, ``since_ms``, ``renewed_ms``; PX = BEAT_LEASE_MS, on
                                                       shard 0's base only. beat_lease takes and renews it,
                                                       beat_release deletes it; read at scrape time
``B beat:epoch``                               STRING  how many times the beat lease was taken (the fencing number a
                                                       beat's messages carry), shard 0 only; never expires.
                                                       beat_lease; read by the fan-out's fence
``B drain:workers``                            HASH    drain worker (Celery node name) → ms of its last heartbeat, on
                                                       shard 0's base only. heartbeat (every few seconds per worker,
                                                       pruning fields an hour old); ``Buffer.forget_worker`` at a
                                                       worker's shutdown; read at scrape time and by the dashboard
``B drained:<bucket ms>``                      STRING  entries that left the buffer (acked or dead-lettered) in the
                                               10 s bucket starting at <bucket ms>; TTL 2 min. Read at scrape
                                               time for the drain rate and ETA. count_drained; read by
                                               ``buffer.stats``
``B drained:total``                             STRING  entries that ever left the shard (acked or dead-lettered): a counter
                                                       that only grows, except after a Redis went back in time (restarted
                                                       from an older snapshot, a lagging replica promoted).
                                                       count_drained; read by chart_sample (the charts' drain rate)
``B chart``                                    LIST    the dashboard's chart samples, newest first,
                                                       ``<t ms>:<depth>:<drained total>:<oldest age ms or -1>``,
                                                       capped (``buffer.charts.CAP``). chart_sample; read by
                                                       ``Buffer.chart_samples`` (docs/operations.md#dashboard-charts)
``B chart:due``                                STRING  on shard 0's base only: set (NX PX the sample interval) by the
                                                       fan-out tick that takes the buffer's next chart sample.
                                                       ``Buffer.mark_fan_out_tick``, in the tick's own round trip
``B sweep:orgs``                               LIST    the stale sweep's frozen org list: a sorted copy of ``orgs``
                                               taken when a cycle starts, deleted when it wraps. sweep
``B sweep:cursor``                             STRING  index in ``sweep:orgs`` of the next org to visit. sweep
``B sweep:counts``                             HASH    env → stale entries at its last visit (no zero fields; envs
                                               not visited in a cycle are removed when it wraps). sweep
``B sweep:visited``                            SET     envs visited in the current cycle. sweep
``B paused:orgs`` / ``B paused:envs``          SET     orgs / envs an operator paused: accepted and counted, not leased,
                                                       not counted stale. ``Buffer.pause``/``resume``; read by
                                                       candidates, shard_stats
``B closed:envs``                              SET     envs whose intake an operator closed: accept answers CLOSED
                                                       (429), the gate diverts them. ``Buffer.close_intake``/
                                                       ``open_intake``; read by accept, trip
``B sweep:lock``                               STRING  owner token of the shard's sweep task (NX PX). sweep
                                               take_lock, released by release_claim (``Buffer.shard_lock``)
``B epoch``                                    STRING  the shard's buffer epoch, ``<random id>:<started ms>``: started
                                               by the epoch check when missing (a first start, or a Redis that
                                               lost its data), never deleted or expired. epoch
                                               (``drainer.epochs`` compares it with Postgres' record)
=============================================  ======  ==============================================================

Entry hash fields (``e:<run>``; the snapshot itself is ``s:<run>``, never rewritten): ``env``, ``org``,
``status`` (QUEUED | LEASED | DEAD | ACKED; a requeued entry waiting in ``retry`` is QUEUED), ``attempts`` (absent: 0),
``accepted_ms``, ``lease_until_ms`` (only while LEASED), ``cancelled_at`` (ms) and ``cancel_reason``,
``extra_tags`` (JSON array of tags appended while buffered), ``last_error``, ``materialised`` (1 once acked; absent: 0),
``acked_ms``, ``dead_ms``, ``created_ms`` (the snapshot's, only when it differs from accepted_ms: the env index
member's key, so ack need not read the snapshot), and the overrides of a reschedule or a metadata write: ``delay_until_ms``,
``metadata`` (JSON object) and ``metadata_version`` (compare-and-set counter); ``solo`` (1: its last lease
expired, so it is leased alone) and ``requeue_tail`` (1: requeued after a lock or statement timeout, so
promote_due puts it at the tail of its queue; cleared there).

Lua scripts that discover run ids at run time (lease, ack, promote_due, …) derive ``e:<run>``, ``q:<env>``
and ``org:<org>:envs`` from the shard base ``B`` passed as ``ARGV[1]``, using exactly the shapes above;
``tests/buffer`` checks the keys they create against the functions here.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from dataclasses import dataclass
from typing import Literal

ClaimKind = Literal["idem", "req"]


def shard_for(org_id: int, shards: int) -> int:
    """The drain shard of an org: stable across processes and deploys (crc32, not ``hash()``)."""
    return zlib.crc32(str(org_id).encode()) % shards


def b64u(text: str) -> str:
    """URL-safe base64 without padding: task ids and user keys may contain ``:`` or anything else."""
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode("ascii")


LITERAL_KEY_MAX_BYTES = 64
"""A claimed key up to this many UTF-8 bytes is named by itself (``b64u``, readable in ``redis-cli``); a longer
one by ``~`` + b64u(SHA-256), 44 characters. So a claim costs ≈150 B whatever the key's length (a 2,048-character
key's claim was 3.2 KB), which with the count bounds of docs/operations.md#buffer-memory caps what an env's
claims may cost. ``~`` is outside the base64url alphabet: a hashed name can never equal a literal one."""


def claim_name(key: str) -> str:
    raw = key.encode()
    if len(raw) <= LITERAL_KEY_MAX_BYTES:
        return b64u(key)
    return "~" + base64.urlsafe_b64encode(hashlib.sha256(raw).digest()).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True)
class ShardKeys:
    """The keys of one shard."""

    prefix: str
    shard: int

    @property
    def base(self) -> str:
        """``<prefix>:{m<k>}:`` — what Lua scripts receive to derive per-entry keys."""
        return f"{self.prefix}:{{m{self.shard}}}:"

    @property
    def orgs(self) -> str:
        return self.base + "orgs"

    def org_envs(self, org_id: int) -> str:
        return f"{self.base}org:{org_id}:envs"

    def queue(self, env_id: int) -> str:
        return f"{self.base}q:{env_id}"

    def entry(self, run_id: str) -> str:
        return f"{self.base}e:{run_id}"

    def snapshot(self, run_id: str) -> str:
        """The entry's snapshot (a STRING beside the hash, so that the hash stays listpack-encoded)."""
        return f"{self.base}s:{run_id}"

    @property
    def queued(self) -> str:
        """The shard's queued-id counter (the sum of its queues' lengths), kept by the scripts."""
        return self.base + "queued"

    @property
    def heads(self) -> str:
        """``<org>:<env>`` → accepted_ms of the env's queue head, for the oldest-age gauge."""
        return self.base + "heads"

    def index(self, env_id: int) -> str:
        """The env's entries not yet acked, run id → created_ms: what a run list pages over."""
        return f"{self.base}ix:{env_id}"

    @property
    def leases(self) -> str:
        return self.base + "leases"

    @property
    def retry(self) -> str:
        return self.base + "retry"

    @property
    def dead(self) -> str:
        return self.base + "dead"

    def claim(self, kind: ClaimKind, env_id: int, task: str, key: str) -> str:
        """``idem:…`` (task-level idempotency key) or ``req:…`` (request-level dedupe key)."""
        if kind not in ("idem", "req"):
            raise ValueError(f"claim kind must be 'idem' or 'req', got {kind!r}")
        return f"{self.base}{kind}:{env_id}:{b64u(task)}:{claim_name(key)}"

    def idem(self, env_id: int, task: str, key: str) -> str:
        return self.claim("idem", env_id, task, key)

    def req(self, env_id: int, task: str, key: str) -> str:
        return self.claim("req", env_id, task, key)

    @property
    def req_fence(self) -> str:
        """Present while the shard's request keys are complete in Redis (docs/api.md#request-idempotency)."""
        return self.base + "fence:req"

    def rate(self, env_id: int) -> str:
        return f"{self.base}rate:{env_id}"

    def tripped(self, env_id: int) -> str:
        return f"{self.base}tripped:{env_id}"

    @property
    def cursor_orgs(self) -> str:
        return self.base + "cursor:orgs"

    @property
    def cursor_envs(self) -> str:
        return self.base + "cursor:envs"

    @property
    def drain_lock(self) -> str:
        return self.base + "drain:lock"

    @property
    def drain_sent(self) -> str:
        """Set while a ``drain_shard`` task for the shard waits in the broker (one at a time)."""
        return self.base + "drain:sent"

    @property
    def drain_circuit(self) -> str:
        return self.base + "drain:circuit"

    @property
    def drain_progress(self) -> str:
        return self.base + "drain:progress"

    @property
    def fan_out_tick(self) -> str:
        """Written and read on shard 0's keys only: one tick for the whole buffer."""
        return self.base + "fan_out:tick"

    @property
    def beat_lease(self) -> str:
        """Shard 0's keys only, like the tick: one lease for the whole buffer (docs/architecture.md#beat-lease)."""
        return self.base + "beat:lease"

    @property
    def beat_epoch(self) -> str:
        return self.base + "beat:epoch"

    @property
    def drain_workers(self) -> str:
        """Written and read on shard 0's keys only: one list of drain workers for the whole buffer."""
        return self.base + "drain:workers"

    def drained(self, bucket_ms: int) -> str:
        """Entries that left the buffer in the bucket starting at ``bucket_ms`` (a multiple of the bucket size)."""
        return f"{self.base}drained:{bucket_ms}"

    @property
    def drained_total(self) -> str:
        """Entries that ever left the shard: the charts derive the drain rate from its differences."""
        return self.base + "drained:total"

    @property
    def chart(self) -> str:
        """The shard's capped series of dashboard chart samples, newest first."""
        return self.base + "chart"

    @property
    def chart_due(self) -> str:
        """Written and read on shard 0's keys only: the gate that lets one fan-out tick per interval sample."""
        return self.base + "chart:due"

    @property
    def sweep_orgs(self) -> str:
        return self.base + "sweep:orgs"

    @property
    def sweep_cursor(self) -> str:
        return self.base + "sweep:cursor"

    @property
    def sweep_counts(self) -> str:
        return self.base + "sweep:counts"

    @property
    def sweep_visited(self) -> str:
        return self.base + "sweep:visited"

    @property
    def sweep_lock(self) -> str:
        return self.base + "sweep:lock"

    @property
    def paused_orgs(self) -> str:
        return self.base + "paused:orgs"

    @property
    def paused_envs(self) -> str:
        return self.base + "paused:envs"

    @property
    def closed_envs(self) -> str:
        return self.base + "closed:envs"

    @property
    def epoch(self) -> str:
        """The shard's buffer epoch: gone or different means this Redis lost the shard's data."""
        return self.base + "epoch"

    @property
    def sweep_state(self) -> tuple[str, ...]:
        """Every key of the sweep's cycle state (not the lock): what ``sweep.clear_state`` deletes."""
        return (self.sweep_orgs, self.sweep_cursor, self.sweep_counts, self.sweep_visited)
