"""The snapshot format (runs/snapshot.py): what goes in comes back out, and what cannot be trusted is refused
with a reason an operator can act on."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from runs.snapshot import VERSION, Snapshot, SnapshotError, from_snapshot, normalise_tags, to_snapshot

CREATED = datetime(2025, 11, 27, 12, 30, 45, 123_000, tzinfo=UTC)
CREATED_MS = 1_764_246_645_123


def minimal(**changes) -> Snapshot:
    return Snapshot(
        id="run_0000000000aaaaaaaaaaaaaaa", env_id=7, org_id=3, task_identifier="hello", created_at=CREATED
    ).replace(**changes)


def full() -> Snapshot:
    return minimal(
        payload='{"json":{"n":1}}',
        payload_type="application/super+json",
        metadata={"step": 2, "list": [1, None, "x"]},
        tags=["a", "b"],
        idempotency_key="order-42",
        idempotency_key_user="order-42-user",
        idempotency_key_expires_at=CREATED + timedelta(days=30),
        queue="emails",
        concurrency_key="customer-7",
        delay_until=CREATED + timedelta(minutes=5, milliseconds=7),
        ttl="1h",
        max_attempts=4,
        max_duration=300,
        machine="small-1x",
        priority=5,
        batch_id="batch_0000000000bbbbbbbbbbbbbbb",
        batch_index=3,
        parent_run_id="run_parent",
        root_run_id="run_root",
        depth=2,
        trace_id="t" * 32,
        span_id="s" * 16,
    )


def doc(**fields) -> str:
    base = {"v": VERSION, "id": "run_x", "env": 7, "org": 3, "task": "hello", "created_ms": CREATED_MS}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...})


# ---------------------------------------------------------------------------------------- round trip


def test_every_field_survives_a_round_trip():
    snapshot = full()

    assert from_snapshot(to_snapshot(snapshot)) == snapshot


def test_round_trip_through_utf8_bytes_as_redis_returns_them():
    snapshot = full()

    assert from_snapshot(to_snapshot(snapshot).encode()) == snapshot


def test_times_are_epoch_milliseconds():
    encoded = json.loads(to_snapshot(minimal(delay_until=CREATED + timedelta(seconds=1))))

    assert encoded["created_ms"] == CREATED_MS
    assert encoded["delay_until_ms"] == CREATED_MS + 1000


def test_sub_millisecond_precision_is_dropped_not_rounded_up():
    snapshot = minimal(created_at=CREATED + timedelta(microseconds=999))

    assert from_snapshot(to_snapshot(snapshot)).created_at == CREATED


@pytest.mark.parametrize(
    "when",
    [
        datetime(2039, 3, 23, 12, 1, 31, 812_000, tzinfo=UTC),  # float timestamps lost a millisecond here
        datetime(2527, 2, 12, 22, 28, 15, 614_000, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC),
        datetime(9466, 6, 28, 2, 53, 16, 328_000, tzinfo=UTC),  # float division drifted by microseconds here
    ],
)
def test_millisecond_times_round_trip_exactly_far_from_now(when):
    snapshot = minimal(created_at=when, delay_until=when, idempotency_key="k", idempotency_key_expires_at=when)

    back = from_snapshot(to_snapshot(snapshot))

    assert (back.created_at, back.delay_until, back.idempotency_key_expires_at) == (when, when, when)


def test_empty_optional_fields_are_omitted():
    encoded = json.loads(to_snapshot(minimal()))

    assert set(encoded) == {"v", "id", "env", "org", "task", "created_ms"}


def test_omitted_optional_fields_read_back_as_defaults():
    snapshot = from_snapshot(doc())

    assert snapshot == minimal(id="run_x")
    assert (snapshot.priority, snapshot.depth, snapshot.payload_type, snapshot.tags) == (0, 0, "application/json", [])


def test_unicode_quotes_and_backslashes_in_payload_and_tags_survive():
    payload = '{"json":{"name":"Zoë 🚀","quote":"say \\"hi\\"","path":"C:\\\\tmp\\\\x"}}'
    tags = ["naïve", 'with "quote"', "back\\slash", "日本"]
    snapshot = minimal(payload=payload, tags=tags, metadata={"emoji": "🚀", "nl": "a\nb"})

    text = to_snapshot(snapshot)
    back = from_snapshot(text.encode("utf-8"))

    assert (back.payload, back.tags, back.metadata) == (payload, tags, {"emoji": "🚀", "nl": "a\nb"})
    assert "🚀" in text  # stored as UTF-8, not \\u escapes: buffered entries stay small


# ----------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        ("", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('"run_x"', "not a JSON object"),
        ("null", "not a JSON object"),
    ],
)
def test_unparseable_documents_are_refused(text, reason):
    with pytest.raises(SnapshotError, match=reason):
        from_snapshot(text)


@pytest.mark.parametrize("version", [..., 0, 2, "1", None])
def test_unknown_version_is_refused_naming_it(version):
    with pytest.raises(SnapshotError, match=r"unsupported snapshot version"):
        from_snapshot(doc(v=version))


@pytest.mark.parametrize("missing", ["id", "env", "org", "task", "created_ms"])
def test_missing_required_field_is_refused_naming_it(missing):
    with pytest.raises(SnapshotError, match=f"'{missing}' is missing"):
        from_snapshot(doc(**{missing: ...}))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("env", "7"),
        ("env", True),
        ("org", 3.0),
        ("id", 12),
        ("task", ["hello"]),
        ("created_ms", True),
        ("created_ms", "1764246645123"),
    ],
)
def test_required_field_of_wrong_type_is_refused_naming_it(field, value):
    with pytest.raises(SnapshotError, match=f"'{field}'"):
        from_snapshot(doc(**{field: value}))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("priority", True),
        ("max_attempts", "3"),
        ("batch_index", 1.5),
        ("depth", False),
        ("payload", {"n": 1}),
        ("idem", 42),
        ("queue", ["q"]),
    ],
)
def test_optional_field_of_wrong_type_is_refused_naming_it(field, value):
    with pytest.raises(SnapshotError, match=f"'{field}' must be"):
        from_snapshot(doc(**{field: value}))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("created_ms", 10**20),
        ("created_ms", -(10**20)),
        ("delay_until_ms", 10**400),
        ("idem_expires_ms", 10**16),
    ],
)
def test_out_of_range_time_is_refused_naming_the_field(field, value):
    with pytest.raises(SnapshotError, match=f"{field} is out of range"):
        from_snapshot(doc(**{field: value}))


def test_non_finite_time_is_refused():
    text = doc().replace(str(CREATED_MS), "NaN")  # Python's json reads the NaN literal

    with pytest.raises(SnapshotError, match="created_ms is out of range"):
        from_snapshot(text)


def test_time_as_string_is_refused_naming_the_field():
    with pytest.raises(SnapshotError, match="delay_until_ms must be epoch milliseconds"):
        from_snapshot(doc(delay_until_ms="2025-11-27T12:00:00Z"))


# --------------------------------------------------------------------------------------------- tags


@pytest.mark.parametrize(
    ("raw", "tags"),
    [({}, []), (None, []), ("x", ["x"]), (["a", "b", "a"], ["a", "b"]), ({"1": "a", "2": "b"}, ["a", "b"])],
)
def test_tags_in_any_shape_are_normalised_to_a_list(raw, tags):
    """Lua's cjson encodes an empty list as {}; null and a bare string also mean something sensible."""
    assert from_snapshot(doc(tags=raw)).tags == tags
    assert normalise_tags(raw) == tags


def test_tags_of_an_impossible_shape_are_refused():
    with pytest.raises(SnapshotError, match="tags must be a list of strings, got int"):
        from_snapshot(doc(tags=5))


def test_empty_tags_written_as_object_by_lua_are_not_serialised_back():
    assert "tags" not in json.loads(to_snapshot(minimal(tags={})))


# ------------------------------------------------------------------------------------- the plain read

_ODD_VALUES = [None, True, False, 0, -1, 7, 1.5, 10**20, "", "x", [], ["a", 1], {}, {"k": "v"}, 10**16]


def _variants() -> list[dict]:
    """The full snapshot's document with each field in turn (and one unknown key) set to each odd value."""
    base = json.loads(to_snapshot(full()))
    variants = [base, {k: v for k, v in base.items() if k not in ("tags", "metadata")}]
    for key in [*base, "unknown", "delay_until_ms"]:
        for value in _ODD_VALUES:
            variants.append({**base, key: value})
    return variants


@pytest.mark.parametrize("document", _variants())
def test_the_plain_read_agrees_with_the_checked_read(document):
    """``from_snapshot``'s fast pass (``_read_plain``) may only give up, never answer differently: whatever it
    returns, the field-by-field read returns too, and what it refuses is refused with the checked reason."""
    from runs.snapshot import _read_checked, _read_plain

    try:
        expected: object = _read_checked(document)
    except SnapshotError as exc:
        expected = str(exc)
    plain = _read_plain(document)
    if plain is not None:
        assert plain == expected
    try:
        got: object = from_snapshot(json.dumps(document))
    except SnapshotError as exc:
        got = str(exc)
    assert got == expected
