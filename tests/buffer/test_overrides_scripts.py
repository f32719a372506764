"""reschedule and set_metadata on buffered runs, in every state, with tenancy and the version compare-and-set."""

from __future__ import annotations

import pytest

from buffer.values import MutationStatus
from tests.buffer.invariants import assert_consistent
from tests.buffer.test_mutations import ENV, ORG, OTHER_ENV, SHARD, to_state


def reschedule(buffer, run_id, *, env_id=ENV, at=9_000):
    return buffer.reschedule(run_id, org_id=ORG, env_id=env_id, delay_until_ms=at)


def set_metadata(buffer, run_id, text, *, version=0, env_id=ENV):
    return buffer.set_metadata(run_id, org_id=ORG, env_id=env_id, metadata_json=text, expected_version=version)


@pytest.mark.parametrize(
    ("state", "expected", "written"),
    [
        ("queued", MutationStatus.QUEUED, True),
        ("waiting_to_retry", MutationStatus.QUEUED, True),
        ("dead", MutationStatus.DEAD, True),
        ("leased", MutationStatus.LEASED, False),  # a drainer holds it: the caller waits for the row instead
        ("acked", MutationStatus.ACKED, False),
    ],
)
def test_reschedule_writes_the_delay_only_while_no_drainer_holds_the_entry(buffer, put, state, expected, written):
    run_id = put(ORG, ENV)
    to_state(buffer, run_id, state)
    assert reschedule(buffer, run_id, at=9_000).status is expected
    assert buffer.get(run_id, org_id=ORG).delay_until_ms == (9_000 if written else None)
    assert_consistent(buffer)


@pytest.mark.parametrize(
    ("state", "expected", "written"),
    [
        ("queued", MutationStatus.QUEUED, True),
        ("dead", MutationStatus.DEAD, True),
        ("leased", MutationStatus.LEASED, False),
        ("acked", MutationStatus.ACKED, False),
    ],
)
def test_set_metadata_writes_only_while_no_drainer_holds_the_entry(buffer, put, state, expected, written):
    run_id = put(ORG, ENV)
    to_state(buffer, run_id, state)
    result = set_metadata(buffer, run_id, '{"a":1}')
    assert result.status is expected
    entry = buffer.get(run_id, org_id=ORG)
    assert (entry.metadata, entry.metadata_version) == (('{"a":1}', 1) if written else (None, 0))


def test_another_envs_run_is_not_found_and_untouched(buffer, put):
    run_id = put(ORG, ENV)
    assert reschedule(buffer, run_id, env_id=OTHER_ENV).status is MutationStatus.NOT_FOUND
    assert set_metadata(buffer, run_id, '{"x":1}', env_id=OTHER_ENV).status is MutationStatus.NOT_FOUND
    assert reschedule(buffer, "run_missing").status is MutationStatus.NOT_FOUND
    entry = buffer.get(run_id, org_id=ORG)
    assert (entry.delay_until_ms, entry.metadata, entry.metadata_version) == (None, None, 0)


def test_a_writer_with_a_stale_version_gets_the_winners_value_and_writes_nothing(buffer, put):
    run_id = put(ORG, ENV)
    first = set_metadata(buffer, run_id, '{"n":1}', version=0)
    assert (first.status, first.version) == (MutationStatus.QUEUED, 1)

    late = set_metadata(buffer, run_id, '{"n":1,"late":true}', version=0)  # computed from version 0 too

    assert (late.status, late.version, late.metadata) == (MutationStatus.CONFLICT, 1, '{"n":1}')
    retried = set_metadata(buffer, run_id, '{"n":2}', version=late.version)
    assert (retried.status, retried.version) == (MutationStatus.QUEUED, 2)
    assert buffer.get(run_id, org_id=ORG).metadata == '{"n":2}'


def test_lease_returns_the_overrides_with_the_entry(buffer, put):
    run_id = put(ORG, ENV)
    reschedule(buffer, run_id, at=123_456)
    set_metadata(buffer, run_id, '{"k":"v"}')
    expected = buffer.get(run_id, org_id=ORG)
    (leased,) = buffer.lease(SHARD, org_id=ORG, env_id=ENV, n=1, now_ms=0, lease_ms=1_000)
    assert (leased.delay_until_ms, leased.metadata, leased.metadata_version) == (123_456, '{"k":"v"}', 1)
    assert (leased.delay_until_ms, leased.metadata) == (expected.delay_until_ms, expected.metadata)
