"""The official @trigger.dev/sdk 4.8.3 against gunicorn serving Mollifier (docs/api.md is the contract).

One server per module: the gate is on with a zero trip threshold, so every trigger of the enrolled org
is buffered, while the non-enrolled org passes straight through to Postgres.
"""

from __future__ import annotations

import pytest

from runs.models import BatchStatus, BatchTaskRun, RunStatus, TaskRun
from runs.tenants import ensure_tenant, issue_api_key
from tests.sdk.harness import buffering_server, sdk

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def server(django_db_setup, django_db_blocker, tmp_path_factory):
    with buffering_server(tmp_path_factory.mktemp("packets")) as live:
        yield live


@pytest.fixture
def buffered_key():
    tenant = ensure_tenant("sdk-enrolled", "dev", enrol=True)
    return issue_api_key(tenant.env)[1]


@pytest.fixture
def direct_key():
    tenant = ensure_tenant("sdk-plain", "prod")
    return issue_api_key(tenant.env)[1]


def test_trigger_direct_writes_a_row_and_retrieve_reads_it(server, direct_key):
    out = sdk(server, direct_key, "trigger", task="hello", payload={"a": 1}, options={"tags": ["t1"]})
    assert out["ok"], out
    run_id = out["result"]["id"]
    assert TaskRun.objects.get(id=run_id).buffered is False
    got = sdk(server, direct_key, "retrieve", id=run_id)
    assert got["ok"], got
    assert got["result"]["status"] == "QUEUED"
    assert got["result"]["payload"] == {"a": 1}
    assert got["result"]["tags"] == ["t1"]


def test_buffered_trigger_is_retrievable_as_queued_with_tags_and_payload(server, buffered_key):
    out = sdk(server, buffered_key, "trigger", task="hello", payload={"b": 'ü"\\'}, options={"tags": ["x", "y"]})
    assert out["ok"], out
    run_id = out["result"]["id"]
    assert not TaskRun.objects.filter(id=run_id).exists()  # parked in Redis, not written
    got = sdk(server, buffered_key, "retrieve", id=run_id)
    assert got["ok"], got
    run = got["result"]
    assert (run["status"], run["isQueued"], run["isCompleted"]) == ("QUEUED", True, False)
    assert run["payload"] == {"b": 'ü"\\'}
    assert run["tags"] == ["x", "y"]


def test_cancel_of_a_buffered_run_shows_canceled(server, buffered_key):
    run_id = sdk(server, buffered_key, "trigger", task="hello", payload={})["result"]["id"]
    out = sdk(server, buffered_key, "cancel", id=run_id)
    assert out["ok"], out
    assert out["result"]["id"] == run_id
    run = sdk(server, buffered_key, "retrieve", id=run_id)["result"]
    assert (run["status"], run["isCancelled"], run["isCompleted"]) == ("CANCELED", True, True)


def test_idempotency_key_reuse_returns_the_same_run_cached(server, buffered_key, direct_key):
    for key in (buffered_key, direct_key):
        first = sdk(server, key, "trigger", task="hello", payload={}, options={"idempotencyKey": "order-42"})
        second = sdk(server, key, "trigger", task="hello", payload={}, options={"idempotencyKey": "order-42"})
        assert first["ok"] and second["ok"], (first, second)
        assert second["result"]["id"] == first["result"]["id"]
        assert second["result"]["isCached"] is True
        assert not first["result"].get("isCached")
    reset = sdk(server, direct_key, "resetKey", task="hello", key="order-42")
    assert reset["ok"], reset
    third = sdk(server, direct_key, "trigger", task="hello", payload={}, options={"idempotencyKey": "order-42"})
    assert third["result"]["id"] != first["result"]["id"]


def test_batch_trigger_of_500_items_makes_500_runs(server, direct_key):
    out = sdk(server, direct_key, "batch", task="hello", count=500)
    assert out["ok"], out
    batch_id = out["result"]["batchId"]
    assert out["result"]["runCount"] == 500
    batch = BatchTaskRun.objects.get(id=batch_id)
    assert batch.sealed and batch.items_received == 500
    assert TaskRun.objects.filter(batch_id=batch_id).count() == 500
    assert sorted(TaskRun.objects.filter(batch_id=batch_id).values_list("batch_index", flat=True)) == list(range(500))
    assert batch.status == BatchStatus.COMPLETED


def test_buffered_batch_is_sealed_with_every_item_parked(server, buffered_key):
    out = sdk(server, buffered_key, "batch", task="hello", count=50)
    assert out["ok"], out
    batch = BatchTaskRun.objects.get(id=out["result"]["batchId"])
    assert batch.sealed and batch.items_received == 50
    assert batch.status == BatchStatus.PROCESSING  # rows come when the drain materialises them
    assert not TaskRun.objects.filter(batch_id=batch.id).exists()


def test_runs_list_pages_through_every_run_newest_first(server, direct_key):
    ids = sdk(server, direct_key, "triggerMany", task="lister", count=7)["result"]
    out = sdk(server, direct_key, "list", query={"limit": 3, "taskIdentifier": "lister"})
    assert out["ok"], out
    listed = [run["id"] for run in out["result"]]
    assert listed == list(reversed(ids))
    assert all(run["status"] == "QUEUED" for run in out["result"])


def test_a_key_of_another_env_gets_not_found(server, buffered_key, direct_key):
    buffered_run = sdk(server, buffered_key, "trigger", task="hello", payload={})["result"]["id"]
    direct_run = sdk(server, direct_key, "trigger", task="hello", payload={})["result"]["id"]
    for key, run_id in ((direct_key, buffered_run), (buffered_key, direct_run)):
        out = sdk(server, key, "retrieve", id=run_id)
        assert not out["ok"]
        assert out["error"]["status"] == 404, out
        cancel = sdk(server, key, "cancel", id=run_id)
        assert cancel["error"]["status"] == 404, cancel
    assert TaskRun.objects.get(id=direct_run).status == RunStatus.PENDING


def test_unknown_key_is_an_authentication_error(server):
    out = sdk(server, "tr_dev_" + "x" * 32, "trigger", task="hello", payload={})
    assert not out["ok"]
    assert out["error"]["status"] == 401
