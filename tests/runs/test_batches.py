"""Batch ingestion: completion through idempotency hits, crash recovery of reserved indices, resends."""

from __future__ import annotations

import json

import pytest

from runs.ids import new_run_id
from runs.models import BatchItem, BatchStatus, BatchTaskRun, TaskRun
from runs.tenants import ensure_tenant, issue_api_key

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(client, key_prefix, mollifier_settings):
    mollifier_settings(ENABLED=False)  # direct writes: the batch can complete inside the test
    tenant = ensure_tenant("batch-org", "dev")
    secret = issue_api_key(tenant.env)[1]

    class Api:
        env = tenant.env
        auth = f"Bearer {secret}"

        def post(self, path, body, content_type="application/json"):
            data = body if isinstance(body, str) else json.dumps(body)
            return client.post(path, data=data, content_type=content_type, HTTP_AUTHORIZATION=f"Bearer {secret}")

        def stream(self, batch_id, items):
            body = "".join(json.dumps(item) + "\n" for item in items)
            return self.post(f"/api/v3/batches/{batch_id}/items", body, "application/x-ndjson").json()

    return Api()


def test_batch_whose_item_hits_an_idempotency_key_still_completes(api):
    cached = api.post("/api/v1/tasks/hello/trigger", {"options": {"idempotencyKey": "K"}}).json()["id"]
    batch = api.post("/api/v3/batches", {"runCount": 2}).json()
    result = api.stream(batch["id"], [
        {"index": 0, "task": "hello", "options": {"idempotencyKey": "K"}},
        {"index": 1, "task": "hello"},
    ])  # fmt: skip
    assert result["sealed"] is True
    assert BatchItem.objects.get(batch_id=batch["id"], index=0).run_id == cached
    assert BatchTaskRun.objects.get(id=batch["id"]).status == BatchStatus.COMPLETED


def test_reserved_index_whose_run_never_got_written_is_triggered_on_resend(api):
    """A worker killed between reserving an index and triggering it: the resend must not count it as done."""
    batch = api.post("/api/v3/batches", {"runCount": 2}).json()
    lost = new_run_id()
    BatchItem.objects.create(batch_id=batch["id"], index=0, run_id=lost, task_identifier="hello")
    result = api.stream(batch["id"], [{"index": 0, "task": "hello"}, {"index": 1, "task": "hello"}])
    assert (result["itemsAccepted"], result["itemsDeduplicated"], result["sealed"]) == (2, 0, True)
    assert TaskRun.objects.filter(id=lost, batch_id=batch["id"], batch_index=0).exists()
    assert BatchTaskRun.objects.get(id=batch["id"]).status == BatchStatus.COMPLETED


def test_resending_a_completed_batch_changes_nothing(api):
    batch = api.post("/api/v3/batches", {"runCount": 1}).json()
    api.stream(batch["id"], [{"index": 0, "task": "hello"}])
    done = BatchTaskRun.objects.get(id=batch["id"])
    assert done.status == BatchStatus.COMPLETED
    again = api.stream(batch["id"], [{"index": 0, "task": "hello"}])
    assert (again["itemsAccepted"], again["itemsDeduplicated"], again["sealed"]) == (0, 1, True)
    after = BatchTaskRun.objects.get(id=batch["id"])
    assert (after.status, after.completed_at) == (BatchStatus.COMPLETED, done.completed_at)
    assert TaskRun.objects.filter(batch_id=batch["id"]).count() == 1


def test_batch_retrieve_lists_runs_by_index_and_is_scoped_to_the_env(api, client):
    batch = api.post("/api/v3/batches", {"runCount": 2}).json()
    api.stream(batch["id"], [{"index": 1, "task": "b"}, {"index": 0, "task": "a"}])
    got = client.get(f"/api/v2/batches/{batch['id']}", HTTP_AUTHORIZATION=api.auth).json()
    tasks = [TaskRun.objects.get(id=run_id).task_identifier for run_id in got["runs"]]
    assert (got["status"], got["runCount"], tasks) == ("COMPLETED", 2, ["a", "b"])
    assert got["processing"]["errors"] == []
    other = issue_api_key(ensure_tenant("batch-other", "dev").env)[1]
    assert client.get(f"/api/v2/batches/{batch['id']}", HTTP_AUTHORIZATION=f"Bearer {other}").status_code == 404
