"""The buffer on a real Redis Cluster (docs/operations.md#redis-cluster): ``make test-cluster`` runs these, and
the rest of tests/buffer, tests/drainer, tests/sweep and the end-to-end storm, against 3 masters.

What the cluster adds, each tried here: a call whose keys span two slots fails loudly (in the client or
in the server) instead of half-running; pipelines of script calls reach every master and keep their order,
also after the masters lost their scripts; WAIT goes to the master that took the accept; the system checks
ask every master and name the one that falls short.
"""

from __future__ import annotations

import re

import pytest
import redis

from buffer.buffer import Buffer, NotReplicated
from buffer.checks import check_redis_eviction_policy, check_redis_persistence
from buffer.cluster import BufferCluster, primaries
from buffer.scripts import LUA_DIR
from buffer.values import AcceptStatus
from tests.buffer.conftest import make_snapshot
from tests.conftest import on_cluster

cluster_only = pytest.mark.skipif(
    not on_cluster(), reason="needs BUFFER_REDIS_URL=redis+cluster://… (make test-cluster)"
)

SHARDS = 16  # the default: its {m<k>} tags spread over every master


def _master_of(buffer: Buffer, shard: int) -> str:
    client = buffer._client
    assert isinstance(client, BufferCluster)
    return client.get_node_from_key(buffer.keys(shard).orgs).name


def _org_of_shard(buffer: Buffer, shard: int) -> int:
    return next(org for org in range(1, 10_000) if buffer.shard_for(org) == shard)


def test_every_script_that_derives_key_names_builds_them_on_the_shard_base_its_header_names():
    """The cluster rule (docs/architecture.md#the-cluster-rule-for-scripts-and-pipelines-declare-keys-one-slot-per-call):
    a key a script cannot declare is built on the shard base its header names (``ARGV[n]  shard key base``, with its
    ``{m<k>}`` tag; ``ARGV[1]`` in most scripts, ``ARGV[7]`` in trigger.lua), so it lives in
    the slot of the declared keys. Runs without a cluster too: a new script is held to it from its first commit."""
    offenders, deriving = [], []
    for path in sorted(LUA_DIR.glob("*.lua")):
        text = path.read_text(encoding="utf-8")
        header, _, body = text.partition("]]")
        code = "\n".join(line.split("--", 1)[0] for line in body.splitlines())
        calls = re.findall(r"redis\.call\(\s*'[A-Z]+'\s*,\s*([^,)]+)", code)
        declared = set()  # locals bound to KEYS: ``local entry, queue = KEYS[1], KEYS[2]``
        for names, values in re.findall(r"local\s+([\w\s,]+?)\s*=\s*([^\n]+)", code):
            for name, value in zip(names.split(","), values.split(","), strict=False):
                if value.strip().startswith("KEYS["):
                    declared.add(name.strip())
        derived = [arg.strip() for arg in calls if not arg.strip().startswith("KEYS[") and arg.strip() not in declared]
        if derived:
            deriving.append(path.name)
        if derived and not re.search(r"ARGV\[\d+\]\s+shard key base \"<prefix>:\{m<k>\}:\"", header):
            offenders.append(f"{path.name}: keys {sorted(set(derived))[:3]} not from KEYS, header names no shard base")
    assert offenders == []
    assert {"lease.lua", "ack.lua", "promote_due.lua"} <= set(deriving)  # the check sees derived keys at all


@pytest.fixture
def wide(key_prefix, mollifier_settings) -> Buffer:
    mollifier_settings(SHARDS=SHARDS)
    return Buffer.from_settings()


@pytest.fixture
def two_masters(wide) -> tuple[int, int]:
    """Two shards whose keys live on different masters."""
    first = _master_of(wide, 0)
    other = next(s for s in range(1, SHARDS) if _master_of(wide, s) != first)
    return 0, other


def accept(buffer: Buffer, org: int, env: int, *, now_ms: int = 1_000) -> str:
    run_id, doc = make_snapshot(org, env)
    result = buffer.accept(
        run_id=run_id, env_id=env, org_id=org, snapshot=doc, now_ms=now_ms, idempotency=None, max_per_env=1000
    )
    assert result.status is AcceptStatus.ACCEPTED
    return run_id


@cluster_only
def test_the_shards_spread_over_every_master(wide):
    masters = {node.name for node in wide._client.get_primaries()}

    assert len(masters) == 3
    assert {_master_of(wide, s) for s in range(SHARDS)} == masters


@cluster_only
def test_a_script_whose_declared_keys_span_two_slots_fails_before_it_runs(wide, two_masters):
    a, b = (wide.keys(s) for s in two_masters)
    run_id, doc = make_snapshot(_org_of_shard(wide, two_masters[0]), 7)

    with pytest.raises(redis.exceptions.RedisClusterException, match="same key slot"):
        wide._scripts.accept(
            keys=[a.entry(run_id), b.queue(7), a.org_envs(1), a.orgs, a.closed_envs],
            args=[run_id, 7, 1, doc, 1_000, 1000],
        )

    assert wide._client.exists(a.entry(run_id)) == 0  # nothing half-written


@cluster_only
def test_a_script_deriving_a_key_of_another_master_fails_in_the_server(wide, two_masters):
    """A script that builds key names from ARGV (here: another shard's base) is refused by the master: the
    reason the derived keys of every script share the hash tag of the declared ones."""
    a, b = (wide.keys(s) for s in two_masters)
    org = _org_of_shard(wide, two_masters[0])
    accept(wide, org, 7)

    with pytest.raises(redis.ResponseError, match="non local key"):
        wide._scripts.lease(
            keys=[a.queue(7), a.org_envs(org), a.orgs, a.leases], args=[b.base, 7, org, 1, 2_000, 1000, 0, "all"]
        )


@cluster_only
def test_a_transaction_across_two_slots_is_refused(wide, two_masters):
    a, b = (wide.keys(s) for s in two_masters)
    pipe = wide._client.pipeline(transaction=True)
    pipe.set(a.sweep_cursor, 1)
    pipe.set(b.sweep_cursor, 1)

    with pytest.raises(redis.exceptions.CrossSlotTransactionError):
        pipe.execute()
    assert wide._client.exists(a.sweep_cursor) == 0


@cluster_only
def test_pipelined_scripts_over_every_master_keep_their_order_after_the_masters_lose_them(wide):
    ids = {s: accept(wide, _org_of_shard(wide, s), 100 + s) for s in range(SHARDS)}
    for node in primaries(wide._client):
        node.script_flush()  # what a restart or failover leaves: no script cached

    stats = wide.shard_stats(now_ms=5_000)  # one pipeline: a shard_stats script call per shard, on 3 masters

    assert [s.shard for s in stats] == list(range(SHARDS))
    assert [s.queued for s in stats] == [1] * SHARDS
    assert wide.find_entry(ids[SHARDS - 1]).env_id == 100 + SHARDS - 1  # a get per shard, pipelined


@cluster_only
def test_a_round_of_leases_of_one_shard_is_pipelined_on_its_master(wide):
    org = _org_of_shard(wide, 5)
    accepted = [accept(wide, org, env) for env in (1, 2, 3)]

    round_ = wide.lease_round(5, [(org, 1, 5), (org, 2, 5), (org, 3, 5)], now_ms=2_000, lease_ms=1000, max_bytes=0)

    assert [e.run_id for e in round_.entries] == accepted
    assert wide.ack(5, accepted, now_ms=2_100, grace_ms=1000).count == 3
    assert not any(wide.shard_has_work())


@cluster_only
def test_replica_durability_waits_on_the_master_that_took_the_accept(key_prefix, mollifier_settings):
    """The cluster of ``make test-cluster`` has no replicas: WAIT, sent to the accept's own master on the same
    connection, answers 0 after the wait, and the accept says so — the entry itself is kept."""
    mollifier_settings(SHARDS=SHARDS, ACCEPT_DURABILITY="replica", ACCEPT_WAIT_MS=50)
    buffer = Buffer.from_settings()
    org = _org_of_shard(buffer, 3)
    run_id, doc = make_snapshot(org, 9)

    with pytest.raises(NotReplicated):
        buffer.accept(run_id=run_id, env_id=9, org_id=org, snapshot=doc, now_ms=1, idempotency=None, max_per_env=9)

    assert buffer.get(run_id, org_id=org).env_id == 9


@cluster_only
def test_the_system_checks_ask_every_master_and_name_the_one_that_falls_short(wide):
    assert check_redis_persistence() == [] and check_redis_eviction_policy() == []
    node = primaries(wide._client)[1]
    kwargs = node.get_connection_kwargs()
    node.config_set("appendonly", "no")
    node.config_set("maxmemory-policy", "allkeys-lru")
    try:
        (aof,), (eviction,) = check_redis_persistence(), check_redis_eviction_policy()
    finally:
        node.config_set("appendonly", "yes")
        node.config_set("maxmemory-policy", "noeviction")

    where = f"{kwargs['host']}:{kwargs['port']}"
    assert aof.id == "mollifier.W005" and where in aof.msg
    assert eviction.id == "mollifier.W003" and where in eviction.msg and "allkeys-lru" in eviction.msg
