"""The official SDK on the rest of the run surface — packets, reschedule, replay, metadata — each on a run that
is a Postgres row ("direct") and on one still in the buffer ("buffered") (docs/api.md#packets, #reschedule,
#replay, #metadata). The server has no drainer: a buffered run stays buffered for the whole test.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from runs.models import RunStatus, TaskRun
from runs.tenants import ensure_tenant, issue_api_key
from tests.sdk.harness import buffering_server, sdk, sdk_together

pytestmark = pytest.mark.django_db(transaction=True)
KIB = 1024


@pytest.fixture(scope="module")
def server(django_db_setup, django_db_blocker, tmp_path_factory):
    with buffering_server(tmp_path_factory.mktemp("packets")) as live:
        yield live


@pytest.fixture
def keys():
    """Secrets of a buffering env ("buffered") and of a pass-through env ("direct"), of different orgs."""
    enrolled = ensure_tenant("sdk-runs-enrolled", "dev", enrol=True)
    plain = ensure_tenant("sdk-runs-plain", "prod")
    return {"buffered": issue_api_key(enrolled.env)[1], "direct": issue_api_key(plain.env)[1]}


def other(path: str) -> str:
    return "direct" if path == "buffered" else "buffered"


def assert_where(run_id: str, path: str) -> None:
    assert TaskRun.objects.filter(id=run_id).exists() is (path == "direct"), f"{run_id} is not {path}"


def ok(out):
    assert out["ok"], out
    return out["result"]


PATHS = ["direct", "buffered"]


# -------------------------------------------------------------------------------------------- packets


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("size", [200 * KIB, 5 * KIB * KIB], ids=["200KiB", "5MiB"])
def test_a_large_payload_round_trips_through_a_packet(server, keys, path, size):
    run_id = ok(sdk(server, keys[path], "triggerBig", task="big", bytes=size))["id"]
    assert_where(run_id, path)
    if path == "direct":
        row = TaskRun.objects.get(id=run_id)
        assert row.payload_type == "application/store"
        assert len(row.payload) < 200  # the path, not the bytes
    got = ok(sdk(server, keys[path], "retrieveBig", id=run_id))
    assert got == {"id": run_id, "status": "QUEUED", "presigned": True, "n": size, "size": size, "intact": True}


@pytest.mark.parametrize("path", PATHS)
def test_a_small_payload_stays_inline(server, keys, path):
    run_id = ok(sdk(server, keys[path], "triggerBig", task="big", bytes=10 * KIB))["id"]
    got = ok(sdk(server, keys[path], "retrieveBig", id=run_id))
    assert (got["presigned"], got["size"], got["intact"]) == (False, 10 * KIB, True)


@pytest.mark.parametrize("path", PATHS)
def test_another_envs_key_never_reaches_a_packet(server, keys, path):
    run_id = ok(sdk(server, keys[path], "triggerBig", task="big", bytes=200 * KIB))["id"]
    stored = TaskRun.objects.get(id=run_id).payload if path == "direct" else None
    mine = ok(sdk(server, keys[path], "runPacketUrl", id=run_id))
    assert mine["presignedUrl"].startswith(server.url)
    theirs = sdk(server, keys[other(path)], "runPacketUrl", id=run_id)
    assert theirs["error"]["status"] == 404, theirs  # the run's route, then the SDK's fallback by path: both 404
    if stored:
        assert ok(sdk(server, keys[path], "downloadUrl", path=stored))["presignedUrl"]
        assert sdk(server, keys[other(path)], "downloadUrl", path=stored)["error"]["status"] == 404


# ----------------------------------------------------------------------------------------- reschedule


@pytest.mark.parametrize("path", PATHS)
def test_reschedule_gives_a_delayed_run_a_new_delay(server, keys, path):
    run_id = ok(sdk(server, keys[path], "trigger", task="later", payload={}, options={"delay": "1h"}))["id"]
    assert_where(run_id, path)
    run = ok(sdk(server, keys[path], "reschedule", id=run_id, delay="3h"))
    assert (run["id"], run["status"]) == (run_id, "DELAYED")
    until = datetime.fromisoformat(run["delayedUntil"].replace("Z", "+00:00"))
    assert abs(until - (datetime.now(UTC) + timedelta(hours=3))) < timedelta(minutes=2)
    again = ok(sdk(server, keys[path], "retrieve", id=run_id))
    assert again["delayedUntil"] == run["delayedUntil"]
    if path == "direct":
        assert TaskRun.objects.get(id=run_id).delay_until == until


@pytest.mark.parametrize("path", PATHS)
def test_reschedule_of_a_run_that_is_not_delayed_is_422(server, keys, path):
    run_id = ok(sdk(server, keys[path], "trigger", task="now", payload={}))["id"]
    out = sdk(server, keys[path], "reschedule", id=run_id, delay="1h")
    assert out["error"]["status"] == 422, out
    assert "Cannot reschedule a run that is not delayed" in out["error"]["message"]


# --------------------------------------------------------------------------------------------- replay


@pytest.mark.parametrize("path", PATHS)
def test_replay_makes_a_new_run_from_the_original(server, keys, path):
    original = ok(sdk(server, keys[path], "trigger", task="again", payload={"a": 1}, options={"tags": ["t"]}))["id"]
    new = ok(sdk(server, keys[path], "replay", id=original))["id"]
    assert new != original
    assert_where(new, path)  # through the normal trigger path: the gate still buffers this env
    run = ok(sdk(server, keys[path], "retrieve", id=new))
    assert (run["taskIdentifier"], run["payload"], run["tags"]) == ("again", {"a": 1}, ["t"])
    changed = ok(sdk(server, keys[path], "replay", id=original, body={"payload": {"b": 2}, "tags": ["u"]}))["id"]
    run = ok(sdk(server, keys[path], "retrieve", id=changed))
    assert (run["payload"], run["tags"]) == ({"b": 2}, ["u"])


@pytest.mark.parametrize("path", PATHS)
def test_replay_of_a_large_payload_keeps_its_packet(server, keys, path):
    original = ok(sdk(server, keys[path], "triggerBig", task="big", bytes=300 * KIB))["id"]
    new = ok(sdk(server, keys[path], "replay", id=original))["id"]
    got = ok(sdk(server, keys[path], "retrieveBig", id=new))
    assert (got["presigned"], got["size"], got["intact"]) == (True, 300 * KIB, True)


# ------------------------------------------------------------------------------------------- metadata


@pytest.mark.parametrize("path", PATHS)
def test_metadata_replace_then_operations(server, keys, path):
    run_id = ok(sdk(server, keys[path], "trigger", task="meta", payload={}, options={"metadata": {"from": "trigger"}}))[
        "id"
    ]
    assert ok(sdk(server, keys[path], "getMetadata", id=run_id)) == {"metadata": {"from": "trigger"}}
    body = {"metadata": {"a": 1}, "operations": [{"type": "increment", "key": "a", "value": 2},
                                                   {"type": "set", "key": "$.deep.x", "value": "y"}]}  # fmt: skip
    assert ok(sdk(server, keys[path], "updateMetadata", id=run_id, body=body)) == {
        "metadata": {"a": 3, "deep": {"x": "y"}}
    }
    run = ok(sdk(server, keys[path], "retrieve", id=run_id))
    assert run["metadata"] == {"a": 3, "deep": {"x": "y"}}
    assert_where(run_id, path)


@pytest.mark.parametrize("path", PATHS)
def test_two_concurrent_metadata_writers_both_land(server, keys, path):
    run_id = ok(sdk(server, keys[path], "trigger", task="meta", payload={}))["id"]
    count = 12
    outs = sdk_together(
        server, keys[path], [("metadataWriter", {"id": run_id, "count": count, "writer": w}) for w in ("a", "b")]
    )
    assert all(out["ok"] for out in outs), outs
    final = ok(sdk(server, keys[path], "getMetadata", id=run_id))["metadata"]
    assert final["n"] == 2 * count
    assert sorted(final["log"]) == sorted(f"{w}-{i}" for w in ("a", "b") for i in range(count))
    assert_where(run_id, path)


# ---------------------------------------------------------------------------------------------- tenancy


@pytest.mark.parametrize("path", PATHS)
def test_another_envs_key_gets_404_for_each_call(server, keys, path):
    run_id = ok(sdk(server, keys[path], "trigger", task="mine", payload={"p": 1}, options={"delay": "1h"}))["id"]
    intruder = keys[other(path)]
    calls = {
        "reschedule": {"delay": "2h"},
        "replay": {},
        "updateMetadata": {"body": {"metadata": {"stolen": True}}},
        "getMetadata": {},
        "runPacketUrl": {},
    }
    for op, args in calls.items():
        out = sdk(server, intruder, op, id=run_id, **args)
        assert not out["ok"] and out["error"]["status"] == 404, (op, out)
    mine = ok(sdk(server, keys[path], "retrieve", id=run_id))
    assert (mine["status"], mine.get("metadata")) == ("DELAYED", None)
    if path == "direct":
        assert TaskRun.objects.get(id=run_id).status == RunStatus.DELAYED
