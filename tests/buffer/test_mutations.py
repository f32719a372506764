"""cancel and append_tags on buffered runs, in every state, with tenancy."""

from __future__ import annotations

import pytest

from buffer.values import EntryStatus, MutationStatus
from tests.buffer.conftest import make_snapshot
from tests.buffer.invariants import assert_consistent

ORG, ENV, OTHER_ENV = 1, 10, 99
SHARD = 3


def to_state(buffer, run_id, state):
    """Move a freshly accepted run into ``state``."""
    if state in ("leased", "acked", "dead", "waiting_to_retry"):
        buffer.lease(SHARD, org_id=ORG, env_id=ENV, n=1, now_ms=0, lease_ms=30_000)
    if state == "acked":
        buffer.ack(SHARD, [run_id], now_ms=10, grace_ms=30_000)
    elif state == "dead":
        buffer.dead_letter(SHARD, run_id, now_ms=10, reason="gone")
    elif state == "waiting_to_retry":
        buffer.requeue(SHARD, run_id, now_ms=10, delay_ms=1_000, error="e")


def cancel(buffer, run_id, *, env_id=ENV, now_ms=5_000, reason="Canceled by user"):
    return buffer.cancel(run_id, org_id=ORG, env_id=env_id, now_ms=now_ms, reason=reason)


def append(buffer, run_id, tags, *, env_id=ENV, max_tags=10):
    return buffer.append_tags(run_id, org_id=ORG, env_id=env_id, tags=tags, max_tags=max_tags)


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("queued", MutationStatus.QUEUED),
        ("waiting_to_retry", MutationStatus.QUEUED),
        ("leased", MutationStatus.LEASED),
        ("dead", MutationStatus.DEAD),
    ],
)
def test_cancel_flags_a_live_entry_and_reports_its_state(buffer, put, state, expected):
    run_id = put(ORG, ENV)
    to_state(buffer, run_id, state)

    result = cancel(buffer, run_id, now_ms=5_000, reason="Canceled by user")

    assert result.status is expected
    assert result.cancelled_at_ms == 5_000
    entry = buffer.get(run_id, org_id=ORG)
    assert (entry.cancelled_at_ms, entry.cancel_reason, entry.cancelled) == (5_000, "Canceled by user", True)
    assert_consistent(buffer)


def test_cancel_of_an_acked_entry_changes_nothing(buffer, put):
    run_id = put(ORG, ENV)
    to_state(buffer, run_id, "acked")

    result = cancel(buffer, run_id)

    assert result.status is MutationStatus.ACKED
    assert result.cancelled_at_ms is None
    assert not buffer.get(run_id, org_id=ORG).cancelled


def test_cancel_is_idempotent_and_keeps_the_first_time_and_reason(buffer, put):
    run_id = put(ORG, ENV)
    cancel(buffer, run_id, now_ms=5_000, reason="first")

    again = cancel(buffer, run_id, now_ms=9_000, reason="second")

    assert again.status is MutationStatus.QUEUED
    assert again.cancelled_at_ms == 5_000
    entry = buffer.get(run_id, org_id=ORG)
    assert (entry.cancelled_at_ms, entry.cancel_reason) == (5_000, "first")


def test_cancel_of_another_envs_run_or_a_missing_run_is_not_found_and_changes_nothing(buffer, put):
    run_id = put(ORG, ENV)

    assert cancel(buffer, run_id, env_id=OTHER_ENV).status is MutationStatus.NOT_FOUND
    assert cancel(buffer, "run_missing").status is MutationStatus.NOT_FOUND
    assert not buffer.get(run_id, org_id=ORG).cancelled


def test_cancel_on_a_leased_entry_survives_lease_expiry_so_cancel_wins(buffer, put):
    run_id = put(ORG, ENV)
    to_state(buffer, run_id, "leased")
    cancel(buffer, run_id)

    buffer.reclaim_expired(SHARD, now_ms=30_000, limit=10)
    buffer.promote_due(SHARD, now_ms=30_000, limit=10)
    (again,) = buffer.lease(SHARD, org_id=ORG, env_id=ENV, n=1, now_ms=30_000, lease_ms=30_000)

    assert again.run_id == run_id
    assert again.cancelled
    assert again.attempts == 1


def test_cancel_does_not_rewrite_the_snapshot(buffer, put):
    run_id = put(ORG, ENV)
    before = buffer.get(run_id, org_id=ORG).snapshot

    cancel(buffer, run_id)

    assert buffer.get(run_id, org_id=ORG).snapshot == before


@pytest.mark.parametrize(
    ("state", "expected"),
    [("queued", MutationStatus.QUEUED), ("leased", MutationStatus.LEASED), ("dead", MutationStatus.DEAD)],
)
def test_append_tags_adds_new_tags_as_a_hash_field(buffer, put, state, expected):
    run_id = put(ORG, ENV, tags=["a"])
    to_state(buffer, run_id, state)
    before = buffer.get(run_id, org_id=ORG).snapshot

    result = append(buffer, run_id, ["b", "c"])

    assert (result.status, result.count, result.total) == (expected, 2, 3)
    entry = buffer.get(run_id, org_id=ORG)
    assert entry.extra_tags == ["b", "c"]
    assert entry.snapshot == before
    assert_consistent(buffer)


def test_append_tags_dedupes_against_snapshot_tags_extra_tags_and_itself(buffer, put):
    run_id = put(ORG, ENV, tags=["a", "b"])
    append(buffer, run_id, ["c"])

    result = append(buffer, run_id, ["a", "c", "d", "d", "b", "e"])

    assert (result.count, result.total) == (2, 5)
    assert buffer.get(run_id, org_id=ORG).extra_tags == ["c", "d", "e"]


def test_append_tags_past_the_cap_is_too_many_with_the_would_be_count_and_writes_nothing(buffer, put):
    run_id = put(ORG, ENV, tags=[f"s{i}" for i in range(8)])
    append(buffer, run_id, ["x"])

    result = append(buffer, run_id, ["x", "y", "z"], max_tags=10)

    assert (result.status, result.count, result.total) == (MutationStatus.TOO_MANY, 11, 11)
    assert buffer.get(run_id, org_id=ORG).extra_tags == ["x"]
    assert append(buffer, run_id, ["y"], max_tags=10).total == 10  # exactly at the cap is fine


@pytest.mark.parametrize(
    "snapshot_tags_json",
    [None, "{}", "[]", '"solo"', "null", '["a","a"]'],
    ids=["absent", "empty-object", "empty-list", "bare-string", "null", "duplicates"],
)
def test_snapshot_tag_shapes_are_counted_like_normalise_tags(buffer, snapshot_tags_json):
    """cjson turns an empty list into ``{}``; whatever the shape, the count matches ``normalise_tags``."""
    import json

    from runs.snapshot import normalise_tags

    run_id, doc = make_snapshot(ORG, ENV)
    if snapshot_tags_json is not None:
        doc = doc[:-1] + f',"tags":{snapshot_tags_json}}}'
    buffer.accept(run_id=run_id, env_id=ENV, org_id=ORG, snapshot=doc, now_ms=0, idempotency=None, max_per_env=10)
    existing = len(normalise_tags(json.loads(doc).get("tags")))

    result = append(buffer, run_id, ["new"], max_tags=10)

    assert result.status is MutationStatus.QUEUED
    assert (result.count, result.total) == (1, existing + 1)


def test_unicode_tags_round_trip(buffer, put):
    run_id = put(ORG, ENV, tags=["zürich"])

    result = append(buffer, run_id, ["zürich", "東京/🚀", 'quote"back\\slash'])

    assert result.count == 2
    assert buffer.get(run_id, org_id=ORG).extra_tags == ["東京/🚀", 'quote"back\\slash']


@pytest.mark.parametrize("state", ["acked", "missing", "other_env"])
def test_append_tags_where_the_buffer_cannot_change_the_run(buffer, put, state):
    run_id = put(ORG, ENV)
    expected = MutationStatus.NOT_FOUND
    if state == "acked":
        to_state(buffer, run_id, "acked")
        expected = MutationStatus.ACKED

    result = append(
        buffer,
        "run_missing" if state == "missing" else run_id,
        ["x"],
        env_id=OTHER_ENV if state == "other_env" else ENV,
    )

    assert result.status is expected
    assert buffer.get(run_id, org_id=ORG).extra_tags == []


def test_append_tags_to_an_undecodable_snapshot_is_a_clear_error(buffer):
    import redis

    buffer.accept(
        run_id="run_bad", env_id=ENV, org_id=ORG, snapshot="not json", now_ms=0, idempotency=None, max_per_env=10
    )

    with pytest.raises(redis.ResponseError, match="not a JSON object"):
        append(buffer, "run_bad", ["x"])


def test_append_tags_refuses_a_bare_string(buffer):
    with pytest.raises(ValueError, match="tags"):
        append(buffer, "run_x", "abc")  # type: ignore[arg-type]


def test_statuses_compare_equal_to_their_wire_strings():
    assert EntryStatus.QUEUED == "QUEUED"
    assert MutationStatus.NOT_FOUND == "NOT_FOUND"
