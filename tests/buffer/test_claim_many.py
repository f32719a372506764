"""claim_many: several claims in one round trip, each answering exactly as ``claim`` would."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from buffer.buffer import Buffer, ClaimRequest
from buffer.scripts import source

ORG, ENV = 1, 10


def key_of(buffer, kind, key):
    return buffer.keys_for_org(ORG).claim(kind, ENV, "t", key)


def test_claim_many_answers_each_claim_as_if_made_alone(buffer):
    assert buffer.claim("idem", org_id=ORG, env_id=ENV, task="t", key="held", run_id="run_a", ttl_ms=60_000) is None

    replies = buffer.claim_many(
        [ClaimRequest("req", "t", "free", "run_b", 5_000), ClaimRequest("idem", "t", "held", "run_b", 5_000)],
        org_id=ORG,
        env_id=ENV,
    )

    assert replies == [None, "run_a"]  # the free key is now run_b's; the held one keeps its holder
    assert buffer._client.get(key_of(buffer, "req", "free")) == "run_b"
    assert 0 < buffer._client.pttl(key_of(buffer, "req", "free")) <= 5_000
    assert buffer._client.get(key_of(buffer, "idem", "held")) == "run_a"
    assert buffer._client.pttl(key_of(buffer, "idem", "held")) > 5_000  # a refused claim leaves the TTL alone


def test_claim_many_takes_over_only_the_named_stale_holder(buffer):
    for key in ("k1", "k2"):
        buffer.claim("idem", org_id=ORG, env_id=ENV, task="t", key=key, run_id="run_dead", ttl_ms=60_000)

    replies = buffer.claim_many(
        [
            ClaimRequest("idem", "t", "k1", "run_new", 60_000, stale_run_id="run_dead"),
            ClaimRequest("idem", "t", "k2", "run_new", 60_000, stale_run_id="run_other"),
        ],
        org_id=ORG,
        env_id=ENV,
    )

    assert replies == [None, "run_dead"]
    assert buffer._client.get(key_of(buffer, "idem", "k1")) == "run_new"


def test_claim_many_loads_a_script_the_server_does_not_know(buffer):
    """After a Redis restart the pipeline's EVALSHA answers NOSCRIPT: the claims are made anyway."""
    unknown = buffer._client.register_script(source("claim") + f"\n-- {uuid.uuid4().hex}\n")
    fresh = Buffer(
        buffer._client, prefix=buffer.prefix, shards=buffer.shards,
        scripts=dataclasses.replace(buffer._scripts, claim=unknown),
    )  # fmt: skip
    assert buffer._client.script_exists(unknown.sha) == [False]

    replies = fresh.claim_many([ClaimRequest("req", "t", "k", "run_a", 60_000)], org_id=ORG, env_id=ENV)

    assert replies == [None]
    assert buffer._client.get(key_of(buffer, "req", "k")) == "run_a"


def test_claim_many_refuses_a_bad_ttl_by_name_before_writing(buffer):
    with pytest.raises(ValueError, match="ttl_ms"):
        buffer.claim_many(
            [ClaimRequest("req", "t", "k", "run_a", 60_000), ClaimRequest("idem", "t", "k", "run_a", 0)],
            org_id=ORG,
            env_id=ENV,
        )
    assert buffer._client.get(key_of(buffer, "req", "k")) is None
