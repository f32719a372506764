"""The drain's Redis state behind ``Buffer``'s typed methods: the round's candidates (``candidates.lua``),
the Postgres-outage circuit (``open_circuit.lua``) and the shard lock — tested directly on real Redis."""

from __future__ import annotations

import logging
import time

import pytest

from buffer.values import Candidate
from tests.buffer.invariants import assert_consistent

pytestmark = pytest.mark.usefixtures("key_prefix")


def org_in(buffer, shard: int, start: int = 1, count: int = 1) -> list[int]:
    """``count`` org ids of ``shard``, ascending from ``start``."""
    found, org = [], start
    while len(found) < count:
        if buffer.shard_for(org) == shard:
            found.append(org)
        org += 1
    return found


def test_an_empty_shard_has_no_candidates_and_covers_all(buffer):
    found = buffer.round_candidates(0, max_orgs=10)

    assert found.picks == [] and found.covers_all
    assert buffer._client.get(buffer.keys(0).cursor_orgs) is None


def test_candidates_rotate_orgs_from_the_cursor_in_numeric_order(buffer, put):
    # 9 < 10 < 100 numerically, but not as strings: the order must be by number.
    orgs = org_in(buffer, 0, start=9, count=3)
    for org in orgs:
        put(org, org * 10, count=org % 3 + 1)

    first = buffer.round_candidates(0, max_orgs=2)
    second = buffer.round_candidates(0, max_orgs=2)
    third = buffer.round_candidates(0, max_orgs=2)

    depth = {org: org % 3 + 1 for org in orgs}
    assert first.picks == [Candidate(o, o * 10, depth[o]) for o in orgs[:2]]
    assert second.picks == [Candidate(o, o * 10, depth[o]) for o in orgs[1:]]
    assert third.picks == [Candidate(o, o * 10, depth[o]) for o in (orgs[2], orgs[0])]  # wraps
    assert not first.covers_all  # a third org was left out
    assert buffer.round_candidates(0, max_orgs=3).covers_all
    assert_consistent(buffer)


def test_each_org_offers_one_env_per_round_from_its_env_cursor(buffer, put):
    (org,) = org_in(buffer, 1)
    for env in (30, 4, 12):
        put(org, env)

    envs = [[c.env_id for c in buffer.round_candidates(1, max_orgs=5).picks] for _ in range(4)]
    found = buffer.round_candidates(1, max_orgs=5)

    assert envs == [[4], [12], [30], [4]]
    assert not found.covers_all  # one org, but three queued envs: not everything is picked


def test_candidates_do_not_touch_the_entries(buffer, put):
    (org,) = org_in(buffer, 2)
    put(org, 7, count=5)

    buffer.round_candidates(2, max_orgs=1)

    assert buffer.depth(2, 7) == 5
    assert buffer.orgs(2) == [org]


def test_the_circuit_doubles_its_back_off_up_to_the_cap_and_closes(buffer):
    delays = [buffer.open_circuit(3, now_ms=1_000, base_ms=100, max_ms=1_000) for _ in range(6)]

    assert delays == [100, 200, 400, 800, 1_000, 1_000]
    assert buffer.circuit_until_ms(3) == 2_000
    assert buffer.circuit_until_ms(2) == 0  # per shard
    buffer.close_circuit(3)
    assert buffer.circuit_until_ms(3) == 0
    assert buffer.open_circuit(3, now_ms=5_000, base_ms=100, max_ms=1_000) == 100  # a new streak


def test_the_shard_lock_admits_one_holder_per_shard_and_kind(buffer):
    with buffer.shard_lock(0, "drain", timeout_s=10) as held:
        assert held
        with buffer.shard_lock(0, "drain", timeout_s=10) as again:
            assert not again
        with buffer.shard_lock(0, "sweep", timeout_s=10) as sweep, buffer.shard_lock(1, "drain", timeout_s=10) as other:
            assert sweep and other
    with buffer.shard_lock(0, "drain", timeout_s=10) as after:
        assert after  # released on exit


def test_a_lock_that_expired_under_its_holder_is_logged_not_raised(buffer, caplog):
    with (
        caplog.at_level(logging.WARNING, logger="buffer.buffer"),
        buffer.shard_lock(0, "sweep", timeout_s=0.05) as held,
    ):
        assert held
        time.sleep(0.15)

    assert "sweep lock of shard 0 expired before release" in caplog.text


def test_ids_too_long_for_lua_numbers_keep_their_exact_keys(buffer, put):
    """Lua prints 123456789012345 as 1.2345678901235e+14: key names must use the member text, not a number."""
    big = [org for org in range(123_456_789_012_345, 123_456_789_012_445) if buffer.shard_for(org) == 0][:2]
    for org in big:
        put(org, org + 1, count=2)

    found = buffer.round_candidates(0, max_orgs=5)

    assert found.picks == [Candidate(org, org + 1, 2) for org in big]
    assert buffer.round_candidates(0, max_orgs=1).picks == [Candidate(big[1], big[1] + 1, 2)]
