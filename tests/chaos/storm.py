"""Helpers shared by the chaos tests: tenants spread over shards, a storm of snapshots parked in bulk, and
cheap looks at the buffer (what is queued, retrying, leased; per-entry attempts) for tens of thousands of
entries, pipelined."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from itertools import cycle

from django.conf import settings

from bench._drainer import fill, small_snapshots
from buffer.buffer import Buffer
from buffer.keys import shard_for
from mollifier_project.clock import now_ms as wall_clock_ms
from runs.models import Environment, TaskRun
from runs.snapshot import Snapshot
from tests.buffer.invariants import assert_consistent
from tests.drainer.processes import Cluster, Process
from tests.factories import EnvironmentFactory, OrganizationFactory


def envs_over_shards(shards: int, *, orgs_per_shard: int = 1) -> list[Environment]:
    """One env for each of ``orgs_per_shard`` orgs on every one of the ``shards`` shards."""
    orgs: dict[int, list] = {k: [] for k in range(shards)}
    while min(len(v) for v in orgs.values()) < orgs_per_shard:
        org = OrganizationFactory()
        if len(orgs[shard_for(org.id, shards)]) < orgs_per_shard:
            orgs[shard_for(org.id, shards)].append(org)
    return [EnvironmentFactory(org=org) for k in range(shards) for org in orgs[k]]


class Storm:
    """Snapshots round robin over ``envs``, parked with bench/_drainer.py ``fill`` (the registered accept
    script, the same keys and arguments as ``Buffer.accept``, ``batch`` per pipelined round trip; anything
    but ACCEPTED fails). ``accept(n)`` is the ``Producer`` callback; it stops at ``limit`` in all."""

    def __init__(self, buffer: Buffer, envs: Sequence[Environment], *, limit: int | None = None) -> None:
        self.buffer = buffer
        self.envs = list(envs)
        self.limit = limit
        self.made: list[Snapshot] = []
        self._next_env = cycle(self.envs)
        self._lock = threading.Lock()

    def snapshots(self, n: int) -> list[Snapshot]:
        now = wall_clock_ms()
        with self._lock:
            return [next(small_snapshots(next(self._next_env), 1, now_ms=now)) for _ in range(n)]

    def accept(self, n: int) -> list[str]:
        if self.limit is not None:
            n = min(n, self.limit - len(self.made))
        if n <= 0:
            return []
        snaps = self.snapshots(n)
        assert fill(self.buffer, snaps, now_ms=wall_clock_ms()) == n
        self.made.extend(snaps)
        return [s.id for s in snaps]

    def ids(self) -> list[str]:
        return [s.id for s in self.made]


def env_ids(envs: Sequence[Environment]) -> list[int]:
    return [env.id for env in envs]


def rows_of_envs(envs: Sequence[Environment]) -> int:
    return TaskRun.objects.filter(env_id__in=env_ids(envs)).count()


def buffer_state(buffer: Buffer, envs: Sequence[Environment]) -> dict[str, int]:
    """Queued (the envs' queues), retrying and leased entries, and shards whose drain lock is held; one round trip."""
    pipe = buffer._client.pipeline(transaction=False)
    for shard in range(buffer.shards):
        k = buffer.keys(shard)
        pipe.zcard(k.retry)
        pipe.zcard(k.leases)
        pipe.exists(k.drain_lock)
    for env in envs:
        pipe.llen(buffer.keys_for_org(env.org_id).queue(env.id))
    replies = pipe.execute()
    n = 3 * buffer.shards
    return {"queued": sum(replies[n:]), "retry": sum(replies[0:n:3]), "leased": sum(replies[1:n:3]),
            "locked": sum(replies[2:n:3])}  # fmt: skip


def in_flight(buffer: Buffer) -> int:
    """Leased entries over all shards (a worker holds them, or held them when it died)."""
    pipe = buffer._client.pipeline(transaction=False)
    for shard in range(buffer.shards):
        pipe.zcard(buffer.keys(shard).leases)
    return sum(pipe.execute())


def dead_letters(buffer: Buffer) -> int:
    pipe = buffer._client.pipeline(transaction=False)
    for shard in range(buffer.shards):
        pipe.zcard(buffer.keys(shard).dead)
    return sum(pipe.execute())


def entry_fields(buffer: Buffer, snapshots: Sequence[Snapshot], *fields: str) -> list[list[str | None]]:
    """``fields`` of every snapshot's entry (acked ones stay readable for ACK_GRACE_S), 10,000 per round trip."""
    out: list[list[str | None]] = []
    for i in range(0, len(snapshots), 10_000):
        pipe = buffer._client.pipeline(transaction=False)
        for s in snapshots[i : i + 10_000]:
            pipe.hmget(buffer.keys_for_org(s.org_id).entry(s.id), list(fields))
        out.extend(pipe.execute())
    return out


def attempts_of(buffer: Buffer, snapshots: Sequence[Snapshot]) -> Counter:
    """attempts → how many entries."""
    return Counter(int(attempts or 0) for (attempts,) in entry_fields(buffer, snapshots, "attempts"))


def queue_audit(buffer: Buffer, envs: Sequence[Environment]) -> dict[str, int]:
    """Ids in the envs' queues: how many, how many distinct, and the status of the entry each names (every id in
    a queue should name a QUEUED entry, tests/buffer/invariants.py; read while a drain runs, so a few are
    leased or acked between the LRANGE and the HGET). A diagnostic for progress lines, not an assertion."""
    statuses: Counter = Counter()
    total = distinct = 0
    for env in envs:
        keys = buffer.keys_for_org(env.org_id)
        ids = buffer._client.lrange(keys.queue(env.id), 0, -1)
        total, distinct = total + len(ids), distinct + len(set(ids))
        pipe = buffer._client.pipeline(transaction=False)
        for run_id in ids:
            pipe.hget(keys.entry(run_id), "status")
        statuses.update(pipe.execute())
    return {"ids": total, "distinct": distinct, **{str(k): v for k, v in statuses.items()}}


def assert_buffer_consistent(buffer: Buffer, cluster: Cluster, beat: Process) -> None:
    """tests/buffer/invariants.py over the whole key space, once nothing writes to it: beat is stopped (no
    more ticks), the ticks already sent have expired, and the harness's events list (the only key under the
    prefix that is not the buffer's) is gone."""
    cluster.retire(beat)
    time.sleep(2 * settings.MOLLIFIER.DRAIN_INTERVAL_S)
    cluster.redis.delete(cluster.events_key)
    assert_consistent(buffer)
