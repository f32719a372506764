"""Structural invariants of the buffer, asserted by tests after every transition.

Reads every key under the buffer's prefix and checks, per shard:

* each key has one of the shapes of ``buffer.keys`` (so Lua-derived keys match the Python schema);
* an env is in ``org:<org>:envs`` iff its queue is non-empty, an org in ``orgs`` iff it has such an env;
* every id in a queue has a QUEUED hash of that env; ``leases`` holds exactly the LEASED entries (score =
  lease_until_ms); ``retry`` holds QUEUED entries that are in no queue; ``dead`` exactly the DEAD ones;
* every QUEUED entry is in exactly one queue position or in retry; no live entry has a TTL; ACKED ones do.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict

from buffer.buffer import Buffer

_SHAPE = re.compile(
    r"^(?P<prefix>.+?):\{m(?P<shard>\d+)\}:(?:"
    r"(?P<orgs>orgs)|org:(?P<org>\d+):envs|q:(?P<queue>\d+)|e:(?P<entry>[^:]+)|(?P<zset>leases|retry|dead)"
    r"|(?P<claim>idem|req):(?P<claim_env>\d+):[A-Za-z0-9_-]*:[A-Za-z0-9_-]*"
    r"|(?P<gate>rate|tripped):(?P<gate_env>\d+)|cursor:(?:orgs|envs)|drained:\d+|drain:circuit)$"
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
    for m in matches:
        key = m.string
        if m["entry"]:
            assert key == k.entry(m["entry"])
            entries[m["entry"]] = client.hgetall(key)
        elif m["queue"]:
            assert key == k.queue(int(m["queue"]))
            queues[int(m["queue"])] = client.lrange(key, 0, -1)
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
