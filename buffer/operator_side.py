"""The operators' side of the buffer: what ``sweep/``, the admin, the gauges and the management command call
(docs/architecture.md#the-redis-buffer).

Statistics and memory, the dashboard's drill-downs, the census, the switches (pause / resume, intake), the
repairs (redrive, take, requeue now), env deletion and the sweep's state. A mixin of ``buffer.buffer.Buffer``;
the scans and parsers live in ``buffer.operators``, ``buffer.stats`` and ``buffer.sweep_state``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from buffer import charts, operators, stats, sweep_state
from buffer.cluster import primaries
from buffer.core import BufferCore, require
from buffer.operators import EnvCensus, ShardTop
from buffer.stats import ShardStats
from buffer.sweep_state import StuckScan, SweepCommit, SweepCycle
from buffer.values import (
    BeatLeaseState,
    ChartSample,
    Entry,
    EntryStatus,
    NodeMemory,
    Switches,
    parse_entry,
    parse_leased,
)


class OperatorSide(BufferCore):
    """The buffer as operators use it."""

    # -- repairs ------------------------------------------------------------------------------------------

    def redrive(
        self, shard: int, *, now_ms: int, limit: int, env_id: int | None = None, run_ids: Sequence[str] = ()
    ) -> tuple[int, int]:
        """Dead letters back to their queue heads with attempts reset (``lua/redrive.lua``): the given
        ``run_ids``, else up to ``limit`` of the shard's longest-dead (of ``env_id`` only, if given).
        Returns ``(redriven, skipped)``; skipped ids were not DEAD any more."""
        require("limit", limit, 1)
        k = self.keys(shard)
        redriven, skipped = self._scripts.redrive(
            keys=[k.dead, k.orgs], args=[k.base, now_ms, limit, "" if env_id is None else env_id, *run_ids]
        )
        return int(redriven), int(skipped)

    def take(self, shard: int, run_ids: Sequence[str], *, now_ms: int, lease_ms: int) -> list[Entry]:
        """Lease these entries wherever they wait (queue, retry, dead, an expired lease) for an operator's
        repair (``lua/take.lua``); one leased by a live drainer, acked or missing is not returned."""
        require("lease_ms", lease_ms, 1)
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

    # -- reads for operators, the sweep and the gauges --------------------------------------------------------

    def shard_stats(self, *, now_ms: int) -> list[ShardStats]:
        """Every shard's depth, leased, retrying, dead, oldest age, stale count and drain rate (``buffer.stats``)."""
        return stats.read(self._client, self._scripts, [self.keys(s) for s in range(self.shards)], now_ms=now_ms)

    def fan_out_last_tick_ms(self) -> int | None:
        """When the drain fan-out last ticked (``DrainSide.mark_fan_out_tick``); ``None``: never, on this Redis."""
        tick = self._client.get(self.keys(0).fan_out_tick)
        return None if tick is None else int(tick)

    def beat_lease(self) -> BeatLeaseState | None:
        """The active beat (``DrainSide.take_beat_lease``); ``None``: no beat holds the lease. One round trip."""
        k = self.keys(0).beat_lease
        pipe = self._client.pipeline(transaction=False)
        pipe.hmget(k, "holder", "epoch", "since_ms", "renewed_ms")
        pipe.pttl(k)
        (holder, epoch, since, renewed), ttl = pipe.execute()
        if holder is None or int(ttl) < 0:
            return None
        return BeatLeaseState(
            holder=holder, epoch=int(epoch), since_ms=int(since), renewed_ms=int(renewed), expires_in_ms=int(ttl)
        )

    def record_chart_samples(self, *, now_ms: int, every_s: int) -> int:
        """Append one chart sample per shard (its depth, drained total and oldest age at ``now_ms``), keeping the
        last ``charts.cap_for(every_s)``: two pipelined round trips whatever the number of shards. Called by the
        fan-out tick that ``mark_fan_out_tick`` said is due. Returns how many shards took a sample."""
        shard_keys = [self.keys(s) for s in range(self.shards)]
        now_stats = stats.read(self._client, self._scripts, shard_keys, now_ms=now_ms)
        return charts.record(
            self._client, self._scripts, shard_keys, now_stats, now_ms=now_ms, every_ms=every_s * 1000,
            cap=charts.cap_for(every_s),
        )  # fmt: skip

    def chart_samples(self, *, every_s: int) -> list[list[ChartSample]]:
        """Every shard's chart samples, oldest first, in shard order (at most ``charts.cap_for(every_s)`` each):
        one pipelined round trip, what the dashboard draws (docs/operations.md#dashboard-charts)."""
        return charts.read(self._client, [self.keys(s) for s in range(self.shards)], limit=charts.cap_for(every_s))

    def drain_workers(self) -> dict[str, int]:
        """Every drain worker heard from lately → ms of its last heartbeat (``DrainSide.heartbeat``)."""
        return {str(worker): int(ms) for worker, ms in self._client.hgetall(self.keys(0).drain_workers).items()}

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
        require("limit", limit, 1)
        return operators.top_envs(self._scripts, self.keys(shard), limit=limit)

    def queue_head(self, *, org_id: int, env_id: int, limit: int) -> list[Entry]:
        """The first ``limit`` entries waiting in the env's queue (the next to be leased, oldest first),
        without their snapshots; two round trips."""
        require("limit", limit, 1)
        ids = operators.queue_head(self._client, self.keys_for_org(org_id), env_id, limit=limit)
        return [entry for entry in self.get_many(ids, org_id=org_id, snapshot=False) if entry is not None]

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

    # -- the sweep's state and queue reads -------------------------------------------------------------------

    def sweep_cycle(self, shard: int, *, max_orgs: int) -> SweepCycle:
        """Where the shard's sweep cycle stands and which orgs the next pass visits."""
        require("max_orgs", max_orgs, 1)
        return sweep_state.read_cycle(self._client, self.keys(shard), max_orgs=max_orgs)

    def find_stuck(
        self, shard: int, orgs: Sequence[int], *, now_ms: int, older_than_ms: int, max_entries: int
    ) -> StuckScan:
        """Stale entries of ``orgs``, and the shard's expired leases and dead letters, in one round trip."""
        require("max_entries", max_entries, 1)
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
