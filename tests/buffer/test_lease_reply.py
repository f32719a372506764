"""``lease`` answers with field values by position (``lua/lease.lua`` ↔ ``buffer.LEASE_FIELDS``): the entries it
returns must be exactly what a full read of the same hashes gives, whatever fields are set."""

from __future__ import annotations

import re

from buffer.scripts import source
from buffer.values import LEASE_FIELDS, EntryStatus
from tests.buffer.invariants import assert_consistent

ORG, ENV, OTHER_ENV = 1, 10, 11
SHARD = 3


def test_leased_entries_equal_a_full_read_of_their_hashes(buffer, put):
    plain, flagged = put(ORG, ENV, count=2)
    other = put(ORG, OTHER_ENV)
    # Give the second entry every optional field: an attempt with an error, a cancel flag, extra tags.
    buffer.lease(SHARD, org_id=ORG, env_id=ENV, n=2, now_ms=100, lease_ms=1_000)
    buffer.requeue(SHARD, plain, now_ms=200, delay_ms=0, error="deadlock detected")
    buffer.requeue(SHARD, flagged, now_ms=200, delay_ms=0, error="lock timeout")
    buffer.promote_due(SHARD, now_ms=300, limit=10)
    buffer.cancel(flagged, org_id=ORG, env_id=ENV, now_ms=400, reason="no longer needed")
    buffer.append_tags(flagged, org_id=ORG, env_id=ENV, tags=["late", "tag"], max_tags=10)

    leased = buffer.lease_many(SHARD, [(ORG, ENV, 5), (ORG, OTHER_ENV, 5)], now_ms=500, lease_ms=30_000)

    # Both were promoted at the same instant, so their relative order is not defined; the env's order is.
    assert {e.run_id for e in leased[:2]} == {plain, flagged}
    assert leased[2].run_id == other
    assert leased == [buffer.get(e.run_id, org_id=ORG) for e in leased]
    assert all(e.status is EntryStatus.LEASED and e.lease_until_ms == 30_500 for e in leased)
    by_id = {e.run_id: e for e in leased}
    assert (by_id[flagged].attempts, by_id[flagged].last_error, by_id[flagged].cancel_reason) == (
        1,
        "lock timeout",
        "no longer needed",
    )
    assert by_id[flagged].extra_tags == ["late", "tag"] and by_id[plain].cancelled_at_ms is None
    assert_consistent(buffer)


def test_lease_script_and_python_agree_on_the_field_order():
    text = source("lease")
    hmget = re.search(r"'HMGET', entry, ('snapshot'.*?)\)", text, re.S).group(1)  # the values it returns
    # The values it returns, then "solo" (read in the same HMGET, dropped before the reply).
    assert tuple(re.findall(r"'(\w+)'", hmget)) == (*LEASE_FIELDS, "solo")
