"""Snapshots stored compressed (buffer/stored_snapshot.py): every reader gets the JSON back, every entry
ever stored still reads and drains, and no script needs to read a snapshot's content."""

from __future__ import annotations

import json

import pytest
import redis

from buffer import stored_snapshot
from buffer.buffer import Buffer
from buffer.client import CLIENT_OPTIONS
from buffer.values import EntryStatus, GateArgs, TriggerStatus
from tests.buffer.conftest import make_snapshot
from tests.buffer.invariants import assert_consistent

ORG, ENV = 3, 30
GRACE = 30_000
LONG = "x" * 300  # a payload that makes a snapshot worth compressing


@pytest.fixture
def compressing(mollifier_settings):
    """A buffer that compresses every snapshot it can shrink (threshold 1 byte)."""

    def make(min_bytes: int = 1) -> Buffer:
        mollifier_settings(SNAPSHOT_COMPRESS_MIN_BYTES=min_bytes)
        return Buffer.from_settings()

    return make


def accept(buffer: Buffer, run_id: str, doc: str, *, now_ms: int = 1_000) -> None:
    result = buffer.accept(
        run_id=run_id, env_id=ENV, org_id=ORG, snapshot=doc, now_ms=now_ms, idempotency=None, max_per_env=10**6
    )
    assert result.status == "ACCEPTED", result


def stored(redis_client, buffer: Buffer, run_id: str) -> bytes:
    return redis_client.get(buffer.keys_for_org(ORG).snapshot(run_id))


def drain_all(buffer: Buffer, *, now_ms: int = 2_000):
    shard = buffer.shard_for(ORG)
    leased = buffer.lease_round(shard, [(ORG, ENV, 100)], now_ms=now_ms, lease_ms=30_000, max_bytes=0).entries
    acked = buffer.ack(shard, [e.run_id for e in leased], now_ms=now_ms, grace_ms=GRACE)
    assert acked.count == len(leased)
    return leased


@pytest.mark.parametrize("min_bytes", [0, 1], ids=["plain", "compressed"])
def test_every_reader_gets_the_json_back_and_the_ack_empties_the_index(buffer, compressing, redis_client, min_bytes):
    buffer = compressing(min_bytes)
    run_id, doc = make_snapshot(ORG, ENV, payload=LONG, tags=["a", "b"])
    accept(buffer, run_id, doc)
    assert stored(redis_client, buffer, run_id).startswith(b"\x01" if min_bytes else b"{")

    assert buffer.get(run_id, org_id=ORG).snapshot == doc
    (listed,) = buffer.env_page(org_id=ORG, env_id=ENV, before=None, limit=10)
    assert listed.snapshot == doc and listed.created_ms == json.loads(doc)["created_ms"]
    assert buffer.find_entry(run_id).snapshot == doc
    assert_consistent(buffer)
    (leased,) = drain_all(buffer)
    assert leased.snapshot == doc and leased.snapshot_error is None
    assert buffer.env_page(org_id=ORG, env_id=ENV, before=None, limit=10) == []
    assert buffer.get(run_id, org_id=ORG).status is EntryStatus.ACKED
    assert_consistent(buffer)


def test_a_triggered_entry_is_stored_compressed_and_taken_back_as_json(buffer, compressing, redis_client):
    buffer = compressing()
    run_id, doc = make_snapshot(ORG, ENV, payload=LONG)
    reply = buffer.trigger(
        run_id=run_id, env_id=ENV, org_id=ORG, task="t", now_ms=1_000, request_key=None, request_ttl_ms=1,
        idempotency=None, gate=GateArgs(window_ms=1_000, threshold=0, hold_ms=0, enrolled=True), snapshot=doc,
        max_per_env=10,
    )  # fmt: skip
    assert reply.status is TriggerStatus.ACCEPTED
    assert stored(redis_client, buffer, run_id).startswith(b"\x01")
    (taken,) = buffer.take(buffer.shard_for(ORG), [run_id], now_ms=2_000, lease_ms=30_000)
    assert taken.snapshot == doc
    assert_consistent(buffer)


def test_the_threshold_is_a_minimum_in_bytes(buffer, compressing, redis_client):
    run_id, doc = make_snapshot(ORG, ENV, payload=LONG)
    size = len(doc.encode())
    at = compressing(size)
    accept(at, run_id, doc)
    assert stored(redis_client, at, run_id).startswith(b"\x01")
    other, doc2 = make_snapshot(ORG, ENV, payload=LONG)
    above = compressing(len(doc2.encode()) + 1)
    accept(above, other, doc2)
    assert stored(redis_client, above, other) == doc2.encode()
    assert [e.snapshot for e in drain_all(above)] == [doc, doc2]
    assert_consistent(above)


def test_a_snapshot_that_would_not_shrink_is_stored_as_json():
    for doc in ('{"q":"zq"}', '{"a":1}'):  # the marker and the deflate block cost more than they save
        assert stored_snapshot.pack(doc, min_bytes=1) == doc


def test_an_entry_whose_created_ms_is_its_accept_time_stores_no_created_ms_field(buffer, compressing, redis_client):
    buffer = compressing()
    run_id, doc = make_snapshot(ORG, ENV, payload=LONG)
    created = json.loads(doc)["created_ms"]
    accept(buffer, run_id, doc, now_ms=created)
    assert redis_client.hget(buffer.keys_for_org(ORG).entry(run_id), "created_ms") is None
    other, doc2 = make_snapshot(ORG, ENV, payload=LONG)
    accept(buffer, other, doc2, now_ms=created + 5)
    assert redis_client.hget(buffer.keys_for_org(ORG).entry(other), "created_ms") == str(created).encode()
    assert_consistent(buffer)
    drain_all(buffer)
    assert_consistent(buffer)  # both index members left: each rebuilt from its hash


def test_an_entry_parked_before_compression_still_drains_and_leaves_the_index(buffer, compressing, redis_client):
    """What the old accept wrote: plain JSON, no created_ms field even though the index member was cut from
    the snapshot's created_ms (not accepted_ms). Ack must still find that member."""
    buffer = compressing()
    run_id, doc = make_snapshot(ORG, ENV, payload=LONG)
    accept(compressing(0), run_id, doc, now_ms=1_000)
    k = buffer.keys_for_org(ORG)
    redis_client.hdel(k.entry(run_id), "created_ms")
    (leased,) = drain_all(buffer)
    assert leased.snapshot == doc
    assert redis_client.zcard(k.index(ENV)) == 0
    assert_consistent(buffer)


def test_an_entry_with_its_snapshot_in_the_hash_field_still_drains_and_leaves_the_index(buffer, redis_client):
    """The layout before s:<run>: the snapshot was the hash field ``snapshot``."""
    run_id, doc = make_snapshot(ORG, ENV, payload=LONG)
    accept(buffer, run_id, doc, now_ms=1_000)
    k = buffer.keys_for_org(ORG)
    redis_client.hdel(k.entry(run_id), "created_ms")
    redis_client.delete(k.snapshot(run_id))
    redis_client.hset(k.entry(run_id), "snapshot", doc)
    assert buffer.get(run_id, org_id=ORG).snapshot == doc
    (leased,) = drain_all(buffer)
    assert leased.snapshot == doc
    assert redis_client.zcard(k.index(ENV)) == 0


def test_append_tags_dedupes_against_the_tags_of_a_compressed_snapshot(buffer, compressing, redis_client):
    buffer = compressing()
    run_id, doc = make_snapshot(ORG, ENV, payload=LONG, tags=["a", "b"])
    accept(buffer, run_id, doc)
    assert stored(redis_client, buffer, run_id).startswith(b"\x01")
    result = buffer.append_tags(run_id, org_id=ORG, env_id=ENV, tags=["b", "c", "c"], max_tags=10)
    assert (result.status, result.count, result.total) == ("QUEUED", 1, 3)
    assert buffer.append_tags(run_id, org_id=ORG, env_id=ENV, tags=["a", "d"], max_tags=3).status == "TOO_MANY"
    assert buffer.get(run_id, org_id=ORG).extra_tags == ["c"]


def test_append_tags_reads_the_snapshot_tag_shapes_the_script_once_read(buffer, redis_client):
    k = buffer.keys_for_org(ORG)
    for tags, total in ((None, 2), ("solo", 3), ({"x": "a", "y": 7}, 2), ([7, True, None, "a"], 2), ([1.5], 3)):
        run_id, doc = make_snapshot(ORG, ENV)
        accept(buffer, run_id, doc)
        snapshot = json.loads(doc)
        snapshot.pop("tags", None)
        if tags is not None:
            snapshot["tags"] = tags
        redis_client.set(k.snapshot(run_id), json.dumps(snapshot))
        result = buffer.append_tags(run_id, org_id=ORG, env_id=ENV, tags=["a", "7"], max_tags=10)
        assert result.total == total, tags


def test_append_tags_to_an_unreadable_snapshot_is_an_error_after_the_tenancy_check(buffer, redis_client):
    run_id, doc = make_snapshot(ORG, ENV)
    accept(buffer, run_id, doc)
    redis_client.set(buffer.keys_for_org(ORG).snapshot(run_id), b"\x01 not deflate")
    assert buffer.append_tags(run_id, org_id=ORG, env_id=ENV + 1, tags=["a"], max_tags=10).status == "NOT_FOUND"
    with pytest.raises(redis.ResponseError, match="not a JSON object"):
        buffer.append_tags(run_id, org_id=ORG, env_id=ENV, tags=["a"], max_tags=10)


def test_a_corrupt_compressed_snapshot_is_leased_with_its_reason_not_raised(buffer, compressing, redis_client):
    buffer = compressing()
    run_id, doc = make_snapshot(ORG, ENV, payload=LONG)
    accept(buffer, run_id, doc)
    k = buffer.keys_for_org(ORG)
    value = stored(redis_client, buffer, run_id)
    redis_client.set(k.snapshot(run_id), value[: len(value) // 2])  # truncated
    good, doc2 = make_snapshot(ORG, ENV, payload=LONG)
    accept(buffer, good, doc2)
    corrupt, fine = drain_all(buffer)
    assert (corrupt.snapshot, fine.snapshot) == ("", doc2)
    assert "compressed snapshot" in corrupt.snapshot_error
    assert_consistent(buffer)  # the ack left the index exact without reading the snapshot


@pytest.mark.parametrize("value", [b"\x01", b"\x01garbage", b"\x02anything", b"\x01" + b"\xff" * 40], ids=repr)
def test_unreadable_compressed_values_raise_corrupt_snapshot(value):
    with pytest.raises(stored_snapshot.CorruptSnapshot):
        stored_snapshot.unpack(value.decode("utf-8", "surrogateescape"))


def test_a_compressed_value_whose_header_length_is_wrong_is_corrupt():
    doc = json.dumps({"payload": "y" * 500})
    packed = stored_snapshot.pack(doc, min_bytes=1)
    assert isinstance(packed, bytes) and int.from_bytes(packed[1:5], "big") == len(doc)
    for length in (len(doc) - 1, len(doc) + 1):
        forged = packed[:1] + length.to_bytes(4, "big") + packed[5:]
        with pytest.raises(stored_snapshot.CorruptSnapshot):
            stored_snapshot.unpack(forged.decode("utf-8", "surrogateescape"))


def test_the_lease_budget_counts_the_json_bytes_of_a_compressed_snapshot(buffer, compressing, redis_client):
    """One repeated byte deflates ~1000:1; the budget bounds the JSON a drainer holds, not Redis bytes."""
    buffer = compressing()
    docs = [make_snapshot(ORG, ENV, payload="z" * 50_000) for _ in range(3)]
    for run_id, doc in docs:
        accept(buffer, run_id, doc)
    assert len(stored(redis_client, buffer, docs[0][0])) < 1_000
    shard = buffer.shard_for(ORG)
    leased = buffer.lease_round(shard, [(ORG, ENV, 3)], now_ms=2_000, lease_ms=30_000, max_bytes=120_000).entries
    assert [e.snapshot for e in leased] == [docs[0][1], docs[1][1]]


def test_created_ms_is_the_first_top_level_one_else_the_fallback():
    assert stored_snapshot.created_ms('{"v":1,"created_ms":123,"payload":"{\\"created_ms\\":9}"}', 5) == "123"
    assert stored_snapshot.created_ms('{"v":1}', 5) == "5"


def test_a_client_without_the_buffer_options_is_refused(redis_client):
    plain = redis.Redis(decode_responses=True)
    with pytest.raises(ValueError, match="CLIENT_OPTIONS"):
        Buffer(plain, prefix="x", shards=1)
    Buffer(redis.Redis(**CLIENT_OPTIONS), prefix="x", shards=1)
    plain.close()
