"""Structural invariants of the buffer, asserted by tests after every transition.

Reads every key under the buffer's prefix and checks, per shard:

* each key has one of the shapes of ``buffer.keys`` (so Lua-derived keys match the Python schema);
* an env is in ``org:<org>:envs`` iff its queue is non-empty, an org in ``orgs`` iff it has such an env;
* every id in a queue has a QUEUED hash of that env; ``leases`` holds exactly the LEASED entries (score =
  lease_until_ms); ``retry`` holds QUEUED entries that are in no queue; ``dead`` exactly the DEAD ones;
* every QUEUED entry is in exactly one queue position or in retry; no live entry has a TTL; ACKED ones do;
* every entry has its snapshot key ``s:<run>`` (with the hash's TTL) and no snapshot key is orphaned;
* the shard counters equal a full recount: ``queued`` is the sum of the queues' lengths, ``heads`` holds
  exactly each non-empty queue's head accepted_ms, and ``shard_stats`` (what the gauges read) returns what
  walking every env (the O(envs) way the gauges used to be computed) finds;
* ``ix:<env>`` holds exactly the env's QUEUED, LEASED and DEAD entries, keyed by their snapshot's created_ms
  (read through ``buffer.stored_snapshot``: plain or compressed), which the hash's created_ms (or, absent,
  accepted_ms) repeats — what ack rebuilds the member from.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict

from buffer import stored_snapshot
from buffer.buffer import Buffer

RETRY_SCAN = 100  # as lua/shard_stats.lua

_SHAPE = re.compile(
    r"^(?P<prefix>.+?):\{m(?P<shard>\d+)\}:(?:"
    r"(?P<orgs>orgs)|org:(?P<org>\d+):envs|q:(?P<queue>\d+)|e:(?P<entry>[^:]+)|s:(?P<snapshot>[^:]+)|(?P<zset>leases|retry|dead)"
    r"|(?P<queued>queued)|(?P<heads>heads)|ix:(?P<index>\d+)|paused:(?:orgs|envs)|closed:envs"
    r"|(?P<claim>idem|req):(?P<claim_env>\d+):[A-Za-z0-9_-]*:[A-Za-z0-9_-]*"
    r"|(?P<gate>rate|tripped):(?P<gate_env>\d+)|cursor:(?:orgs|envs)|drained:\d+|drained:total|chart|chart:due|drain:circuit|drain:progress|drain:sent|drain:workers|fan_out:tick|epoch|beat:lease|beat:epoch)$"
)


def assert_consistent(buffer: Buffer) -> None:
    client = buffer._client
    all_keys = sorted(client.scan_iter(match=f"{buffer.prefix}:*", count=1000))
    by_shard: dict[int, list[re.Match[str]]] = defaultdict(list)
    for key in all_keys:
        match = _SHAPE.match(key)
        assert match is not None, f"unexpected key shape: {key}"
        assert match["prefix"] == buffer.prefix, key
        by_shard[int(match["shard"])].append(match)
    for shard, matches in by_shard.items():
        _assert_shard(buffer, shard, matches)


def _assert_shard(buffer: Buffer, shard: int, matches: list[re.Match[str]]) -> None:
    client = buffer._client
    k = buffer.keys(shard)
    entries: dict[str, dict[str, str]] = {}
    queues: dict[int, list[str]] = {}
    org_sets: dict[int, set[int]] = {}
    snapshots: dict[str, str] = {}
    indexes: dict[int, list[str]] = {}
    for m in matches:
        key = m.string
        if m["entry"]:
            assert key == k.entry(m["entry"])
            entries[m["entry"]] = client.hgetall(key)
        elif m["queue"]:
            assert key == k.queue(int(m["queue"]))
            queues[int(m["queue"])] = client.lrange(key, 0, -1)
        elif m["snapshot"]:
            assert key == k.snapshot(m["snapshot"])
            snapshots[m["snapshot"]] = client.get(key)
        elif m["index"]:
            assert key == k.index(int(m["index"]))
            indexes[int(m["index"])] = client.zrange(key, 0, -1)
        elif m["org"]:
            assert key == k.org_envs(int(m["org"]))
            org_sets[int(m["org"])] = {int(env) for env in client.smembers(key)}

    # Queue presence ⇔ set membership.
    expected: dict[int, set[int]] = defaultdict(set)
    positions: Counter[str] = Counter()
    for env, run_ids in queues.items():
        assert run_ids, f"empty queue key for env {env}"
        for run_id in run_ids:
            entry = entries.get(run_id)
            assert entry is not None, f"queued id {run_id} has no hash"
            assert entry["status"] == "QUEUED", (run_id, entry["status"])
            assert int(entry["env"]) == env
            expected[int(entry["org"])].add(env)
            positions[run_id] += 1
    assert org_sets == dict(expected), f"shard {shard}: org/env sets {org_sets} != queue presence {dict(expected)}"
    assert {int(org) for org in client.smembers(k.orgs)} == set(expected), f"shard {shard}: orgs set is stale"

    leases = dict(client.zrange(k.leases, 0, -1, withscores=True))
    retry = set(client.zrange(k.retry, 0, -1))
    dead = set(client.zrange(k.dead, 0, -1))
    for run_id, entry in entries.items():
        status = entry["status"]
        in_queue = positions[run_id]
        ttl = client.pttl(k.entry(run_id))
        if status == "QUEUED":
            assert (in_queue, run_id in retry) in {(1, False), (0, True)}, (run_id, in_queue, run_id in retry)
            assert run_id not in leases
            assert run_id not in dead
        elif status == "LEASED":
            assert in_queue == 0
            assert run_id not in retry
            assert run_id not in dead
            assert leases.get(run_id) == float(entry["lease_until_ms"]), run_id
        elif status == "DEAD":
            assert in_queue == 0
            assert run_id in dead
            assert run_id not in retry
            assert run_id not in leases
        else:
            assert status == "ACKED", status
            assert in_queue == 0
            assert run_id not in (retry | dead | set(leases))
            assert entry["materialised"] == "1"
        if status == "ACKED":
            assert ttl > 0, f"acked entry {run_id} has no grace TTL"
        else:
            assert ttl == -1, f"{status} entry {run_id} has a TTL ({ttl} ms): a TTL silently loses runs"
    assert set(leases) <= set(entries)
    assert retry <= set(entries)
    assert dead <= set(entries)
    _assert_snapshots(buffer, shard, entries, snapshots)
    _assert_counters(buffer, shard, entries, queues, leases, retry, dead)
    _assert_index(shard, entries, snapshots, indexes)


def _assert_snapshots(buffer: Buffer, shard: int, entries: dict, snapshots: dict[str, str]) -> None:
    """Each entry has its snapshot beside its hash (same TTL class); no snapshot outlives its hash — except
    for an acked pair, whose two keys expire on their own (one may go a moment before the other)."""
    client, keys = buffer._client, buffer.keys(shard)
    for run_id in set(snapshots) - set(entries):
        assert client.pttl(keys.snapshot(run_id)) != -1, f"snapshot of {run_id} outlived its entry"
    for run_id, entry in entries.items():
        assert "snapshot" not in entry, f"{run_id}: the snapshot is in the hash (it must be s:<run>)"
        ttl = client.pttl(keys.snapshot(run_id))
        if entry["status"] == "ACKED":
            assert ttl != -1, f"acked {run_id}: its snapshot has no grace TTL"
        else:
            assert ttl == -1, f"{entry['status']} {run_id}: snapshot missing or with a TTL ({ttl})"


def recount(buffer: Buffer, shard: int, *, now_ms: int) -> tuple[int, int, int, int, int, int | None]:
    """(queued, retrying, leased, expired, dead, oldest accepted_ms) by walking every org, env and queue
    of the shard: the definition the counters must match."""
    client = buffer._client
    k = buffer.keys(shard)
    paused_orgs = client.smembers(k.paused_orgs)
    paused_envs = client.smembers(k.paused_envs)
    queued, oldest = 0, None
    for org in client.smembers(k.orgs):
        for env in client.smembers(k.org_envs(int(org))):
            queue = k.queue(int(env))
            queued += client.llen(queue)
            head = client.lindex(queue, 0)
            if head and org not in paused_orgs and env not in paused_envs:
                accepted = int(client.hget(k.entry(head), "accepted_ms"))
                oldest = accepted if oldest is None else min(oldest, accepted)
    for run_id in client.zrange(k.retry, 0, RETRY_SCAN - 1):
        value = client.hget(k.entry(run_id), "accepted_ms")
        if value is not None:
            oldest = int(value) if oldest is None else min(oldest, int(value))
    return (
        queued, client.zcard(k.retry), client.zcard(k.leases), client.zcount(k.leases, "-inf", now_ms),
        client.zcard(k.dead), oldest,
    )  # fmt: skip


def _assert_counters(
    buffer: Buffer, shard: int, entries: dict, queues: dict, leases: dict, retry: set, dead: set
) -> None:
    client = buffer._client
    k = buffer.keys(shard)
    assert int(client.get(k.queued) or 0) == sum(len(ids) for ids in queues.values()), f"shard {shard}: queued"
    heads = {member: int(score) for member, score in client.zrange(k.heads, 0, -1, withscores=True)}
    expected = {f"{entries[ids[0]]['org']}:{env}": int(entries[ids[0]]["accepted_ms"]) for env, ids in queues.items()}
    assert heads == expected, f"shard {shard}: heads {heads} != queue heads {expected}"
    for now_ms in (0, 10**13):
        got = buffer.shard_stats_of(shard, now_ms=now_ms)
        want = recount(buffer, shard, now_ms=now_ms)
        have = (got.queued, got.retrying, got.leased, got.expired_leases, got.dead, got.oldest_accepted_ms)
        assert have == want, f"shard {shard}: shard_stats {have} != full recount {want}"


def _assert_index(shard: int, entries: dict, snapshots: dict[str, str], indexes: dict[int, list[str]]) -> None:
    expected: dict[int, list[str]] = defaultdict(list)
    for run_id, entry in entries.items():
        if entry["status"] == "ACKED":
            continue
        kept = entry.get("created_ms", entry["accepted_ms"])  # what ack rebuilds the member from
        try:
            created = json.loads(stored_snapshot.unpack(snapshots[run_id])).get("created_ms", entry["accepted_ms"])
        except (stored_snapshot.CorruptSnapshot, ValueError):
            created = kept  # a test's deliberately unreadable snapshot: the accept passed accepted_ms
        assert str(kept) == str(created), f"{run_id}: the hash's created_ms {kept} is not the snapshot's {created}"
        expected[int(entry["env"])].append(f"{int(created):015d}{run_id}")
    assert indexes == {env: sorted(members) for env, members in expected.items()}, f"shard {shard}: env index"
