"""accept, get, claim and release_claim: the trigger side of the buffer."""

from __future__ import annotations

import json
import zlib

import pytest
from prometheus_client import REGISTRY

from buffer import stored_snapshot
from buffer.buffer import Buffer
from buffer.values import AcceptStatus, EntryStatus, IdemRef
from tests.buffer.conftest import make_snapshot
from tests.buffer.invariants import assert_consistent

ORG, ENV = 1, 10


def accept(buffer, run_id, doc, *, env_id=ENV, org_id=ORG, now_ms=1_000, idempotency=None, max_per_env=100):
    return buffer.accept(
        run_id=run_id,
        env_id=env_id,
        org_id=org_id,
        snapshot=doc,
        now_ms=now_ms,
        idempotency=idempotency,
        max_per_env=max_per_env,
    )


def test_accepted_entry_is_queued_with_its_fields_and_no_ttl(buffer):
    run_id, doc = make_snapshot(ORG, ENV, tags=["a"])

    result = accept(buffer, run_id, doc, now_ms=1_234)

    assert result.status is AcceptStatus.ACCEPTED
    assert result.depth == 1
    entry = buffer.get(run_id, org_id=ORG)
    assert entry is not None
    assert (entry.status, entry.env_id, entry.org_id, entry.attempts, entry.accepted_ms) == (
        EntryStatus.QUEUED,
        ENV,
        ORG,
        0,
        1_234,
    )
    assert entry.snapshot == doc
    assert not entry.materialised
    assert not entry.cancelled
    assert entry.extra_tags == []
    shard = buffer.shard_for(ORG)
    assert buffer.orgs(shard) == [ORG]
    assert buffer.envs(shard, ORG) == [ENV]
    assert buffer.depth(shard, ENV) == 1
    assert buffer._client.pttl(buffer.keys(shard).entry(run_id)) == -1
    assert_consistent(buffer)


def test_get_of_unknown_run_is_none(buffer):
    assert buffer.get("run_doesnotexist", org_id=ORG) is None


@pytest.mark.parametrize("state", ["queued", "leased", "dead", "acked_in_grace", "waiting_to_retry"])
def test_duplicate_run_id_is_refused_in_every_state_and_changes_nothing(buffer, state):
    run_id, doc = make_snapshot(ORG, ENV, payload="first")
    assert accept(buffer, run_id, doc).status is AcceptStatus.ACCEPTED
    shard = buffer.shard_for(ORG)
    if state != "queued":
        buffer.lease(shard, org_id=ORG, env_id=ENV, n=1, now_ms=2_000, lease_ms=30_000)
    if state == "dead":
        assert buffer.dead_letter(shard, run_id, now_ms=3_000, reason="env deleted")
    elif state == "acked_in_grace":
        assert buffer.ack(shard, [run_id], now_ms=3_000, grace_ms=30_000).count == 1
    elif state == "waiting_to_retry":
        assert buffer.requeue(shard, run_id, now_ms=3_000, delay_ms=60_000, error="deadlock") == 1
    before = buffer.get(run_id, org_id=ORG)
    depth_before = buffer.depth(shard, ENV)

    _, other_doc = make_snapshot(ORG, ENV, run_id=run_id, payload="second")
    result = accept(buffer, run_id, other_doc, now_ms=4_000)

    assert result.status is AcceptStatus.DUPLICATE
    assert buffer.get(run_id, org_id=ORG) == before
    assert buffer.depth(shard, ENV) == depth_before
    assert_consistent(buffer)


def test_idempotency_key_is_bound_to_the_accepted_run(buffer):
    run_id, doc = make_snapshot(ORG, ENV)
    idem = IdemRef(ENV, "hello-world", "order-1", ttl_ms=60_000)

    assert accept(buffer, run_id, doc, idempotency=idem).status is AcceptStatus.ACCEPTED

    key = buffer.keys_for_org(ORG).idem(ENV, "hello-world", "order-1")
    assert buffer._client.get(key) == run_id
    assert 0 < buffer._client.pttl(key) <= 60_000


def test_accept_succeeds_when_the_key_was_already_claimed_by_the_same_run(buffer):
    run_id, doc = make_snapshot(ORG, ENV)
    assert buffer.claim("idem", org_id=ORG, env_id=ENV, task="t", key="k", run_id=run_id, ttl_ms=60_000) is None

    result = accept(buffer, run_id, doc, idempotency=IdemRef(ENV, "t", "k", 60_000))

    assert result.status is AcceptStatus.ACCEPTED


def test_accept_with_a_key_bound_to_another_run_returns_the_holder_and_writes_nothing(buffer):
    first, first_doc = make_snapshot(ORG, ENV)
    second, second_doc = make_snapshot(ORG, ENV)
    idem = IdemRef(ENV, "t", "k", 60_000)
    accept(buffer, first, first_doc, idempotency=idem)

    result = accept(buffer, second, second_doc, idempotency=idem)

    assert result.status is AcceptStatus.IDEMPOTENT
    assert result.existing_run_id == first
    assert buffer.get(second, org_id=ORG) is None
    assert buffer.depth(buffer.shard_for(ORG), ENV) == 1
    assert_consistent(buffer)


def test_same_key_in_another_env_or_task_is_independent(buffer):
    first, first_doc = make_snapshot(ORG, ENV)
    other_env, other_env_doc = make_snapshot(ORG, ENV + 1)
    other_task, other_task_doc = make_snapshot(ORG, ENV)
    accept(buffer, first, first_doc, idempotency=IdemRef(ENV, "t", "k", 60_000))

    in_other_env = accept(
        buffer, other_env, other_env_doc, env_id=ENV + 1, idempotency=IdemRef(ENV + 1, "t", "k", 60_000)
    )
    in_other_task = accept(buffer, other_task, other_task_doc, idempotency=IdemRef(ENV, "t2", "k", 60_000))

    assert in_other_env.status is AcceptStatus.ACCEPTED
    assert in_other_task.status is AcceptStatus.ACCEPTED


def test_idempotency_ref_for_another_env_is_refused(buffer):
    run_id, doc = make_snapshot(ORG, ENV)
    with pytest.raises(ValueError, match=r"idempotency\.env_id"):
        accept(buffer, run_id, doc, idempotency=IdemRef(ENV + 1, "t", "k", 60_000))


def test_full_env_is_refused_exactly_at_the_cap_and_nothing_is_written(buffer, put):
    put(ORG, ENV, count=2)
    run_id, doc = make_snapshot(ORG, ENV)

    result = accept(buffer, run_id, doc, max_per_env=2, idempotency=IdemRef(ENV, "t", "k", 60_000))

    assert result.status is AcceptStatus.FULL
    assert result.depth == 2
    assert buffer.get(run_id, org_id=ORG) is None
    assert buffer._client.exists(buffer.keys_for_org(ORG).idem(ENV, "t", "k")) == 0
    assert buffer.depth(buffer.shard_for(ORG), ENV) == 2
    # Another env of the same org has its own cap.
    other, other_doc = make_snapshot(ORG, ENV + 1)
    assert accept(buffer, other, other_doc, env_id=ENV + 1, max_per_env=2).status is AcceptStatus.ACCEPTED
    assert_consistent(buffer)


def test_cap_counts_waiting_entries_not_leased_ones(buffer, put):
    put(ORG, ENV, count=2)
    buffer.lease(buffer.shard_for(ORG), org_id=ORG, env_id=ENV, n=1, now_ms=2_000, lease_ms=30_000)
    run_id, doc = make_snapshot(ORG, ENV)

    assert accept(buffer, run_id, doc, max_per_env=2).status is AcceptStatus.ACCEPTED


@pytest.mark.parametrize("min_bytes", [0, 1], ids=["plain", "compressed"])
def test_payload_with_quotes_backslashes_unicode_and_emoji_round_trips_byte_exact(
    buffer, redis_client, mollifier_settings, min_bytes
):
    mollifier_settings(SNAPSHOT_COMPRESS_MIN_BYTES=min_bytes)
    buffer = Buffer.from_settings()
    payload = json.dumps(
        {"q": 'say "hi"', "b": "C:\\path\\", "u": "zürich — 東京", "e": "🚀👩‍💻", "nl": "a\nb\t\u0000"}
    )
    run_id, doc = make_snapshot(ORG, ENV, payload=payload, metadata={"ключ": "значение 🎉"}, tags=["ünï", "🏷️"])
    accept(buffer, run_id, doc)

    stored = redis_client.get(buffer.keys_for_org(ORG).snapshot(run_id))
    if min_bytes:  # stored compressed (the first byte says so), and the bytes decompress to the very JSON
        assert stored[:1] == b"\x01" and int.from_bytes(stored[1:5], "big") == len(doc.encode()) > len(stored)
        assert zlib.decompressobj(-15, zdict=stored_snapshot.DICTIONARY_V1).decompress(stored[5:]) == doc.encode()
    else:
        assert stored == doc.encode("utf-8")
    assert buffer.get(run_id, org_id=ORG).snapshot == doc
    (leased,) = buffer.lease(buffer.shard_for(ORG), org_id=ORG, env_id=ENV, n=1, now_ms=2_000, lease_ms=30_000)
    assert leased.snapshot == doc
    assert json.loads(leased.snapshot)["payload"] == payload


def test_each_accept_outcome_is_counted_by_result(buffer):
    def sample(result):
        return REGISTRY.get_sample_value("mollifier_accepted_total", {"result": result}) or 0.0

    before = {result: sample(result) for result in ("accepted", "duplicate", "full")}
    run_id, doc = make_snapshot(ORG, ENV)
    accept(buffer, run_id, doc, max_per_env=1)
    accept(buffer, run_id, doc, max_per_env=1)
    other, other_doc = make_snapshot(ORG, ENV)
    accept(buffer, other, other_doc, max_per_env=1)

    assert {result: sample(result) - before[result] for result in before} == {"accepted": 1, "duplicate": 1, "full": 1}


@pytest.mark.parametrize("kind", ["idem", "req"])
def test_claim_is_compare_and_set(buffer, kind):
    def claim(run_id, stale=None):
        return buffer.claim(
            kind, org_id=ORG, env_id=ENV, task="t", key="k", run_id=run_id, ttl_ms=10_000, stale_run_id=stale
        )

    assert claim("run_a") is None  # free → ours
    assert claim("run_a") is None  # already ours
    assert claim("run_b") == "run_a"  # held by another live run
    assert claim("run_b", stale="run_other") == "run_a"  # the stale id must match the holder
    assert claim("run_b", stale="run_a") is None  # holder known gone → taken over
    assert buffer._client.get(buffer.keys_for_org(ORG).claim(kind, ENV, "t", "k")) == "run_b"
    assert 0 < buffer._client.pttl(buffer.keys_for_org(ORG).claim(kind, ENV, "t", "k")) <= 10_000


@pytest.mark.parametrize("kind", ["idem", "req"])
def test_release_claim_deletes_only_for_the_holder(buffer, kind):
    names = {"org_id": ORG, "env_id": ENV, "task": "t", "key": "k"}
    buffer.claim(kind, **names, run_id="run_a", ttl_ms=10_000)

    assert buffer.release_claim(kind, **names, run_id="run_b") is False
    assert buffer.claim(kind, **names, run_id="run_b", ttl_ms=10_000) == "run_a"
    assert buffer.release_claim(kind, **names, run_id="run_a") is True
    assert buffer.release_claim(kind, **names, run_id="run_a") is False
    assert buffer.claim(kind, **names, run_id="run_b", ttl_ms=10_000) is None


def test_released_idempotency_key_can_be_bound_by_another_accept(buffer):
    first, first_doc = make_snapshot(ORG, ENV)
    second, second_doc = make_snapshot(ORG, ENV)
    idem = IdemRef(ENV, "t", "k", 60_000)
    accept(buffer, first, first_doc, idempotency=idem)
    assert buffer.release_claim("idem", org_id=ORG, env_id=ENV, task="t", key="k", run_id=first)

    assert accept(buffer, second, second_doc, idempotency=idem).status is AcceptStatus.ACCEPTED


def test_reset_claim_deletes_the_key_whoever_holds_it(buffer):
    names = {"org_id": ORG, "env_id": ENV, "task": "t", "key": "k"}
    buffer.claim("idem", **names, run_id="run_a", ttl_ms=10_000)

    assert buffer.reset_claim("idem", **names) is True
    assert buffer.reset_claim("idem", **names) is False
    assert buffer.claim("idem", **names, run_id="run_b", ttl_ms=10_000) is None
