"""Batch ingestion: completion through idempotency hits, crash recovery of reserved indices, resends."""

from __future__ import annotations

import json

import pytest

from runs import batches, trigger
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


def _refuse_the_nth_trigger(monkeypatch, n, *, inside=None):
    """Make the ``n``-th trigger call of the test raise ``Backpressure`` (a 429); ``inside(env, buffer, cfg,
    now_ms)`` runs first, in the refused call, before the refused stream's cleanup can run."""
    real = trigger.trigger
    calls = 0

    def wrapped(env, snapshot, **kwargs):
        nonlocal calls
        calls += 1
        if calls == n:
            if inside is not None:
                inside(env, kwargs["buffer"], kwargs["cfg"], kwargs["now_ms"])
            raise trigger.Backpressure("Too many queued runs", headers={"x-ratelimit-reset": "1"})
        return real(env, snapshot, **kwargs)

    monkeypatch.setattr(trigger, "trigger", wrapped)


def _ndjson(items):
    return "".join(json.dumps(item) + "\n" for item in items)


def _one_run_per_index(batch_id, run_count):
    rows = list(TaskRun.objects.filter(batch_id=batch_id).values_list("batch_index", "id"))
    items = dict(BatchItem.objects.filter(batch_id=batch_id).values_list("index", "run_id"))
    assert len(rows) == run_count, sorted(rows)
    assert sorted(index for index, _ in rows) == list(range(run_count))
    assert items == dict(rows)  # each index's BatchItem points at its row
    assert BatchTaskRun.objects.get(id=batch_id).status == BatchStatus.COMPLETED


def test_refused_streams_remainder_is_triggered_by_the_resend(api, monkeypatch):
    """A stream refused at its 4th item (429): the resend triggers exactly the three not yet triggered."""
    batch = api.post("/api/v3/batches", {"runCount": 6}).json()
    items = [{"index": i, "task": "hello"} for i in range(6)]
    _refuse_the_nth_trigger(monkeypatch, 4)

    refused = api.post(f"/api/v3/batches/{batch['id']}/items", _ndjson(items), "application/x-ndjson")
    assert refused.status_code == 429
    assert TaskRun.objects.filter(batch_id=batch["id"]).count() == 3

    again = api.stream(batch["id"], items)
    assert (again["itemsAccepted"], again["itemsDeduplicated"], again["sealed"]) == (3, 3, True)
    _one_run_per_index(batch["id"], 6)


def test_overlapping_resends_of_a_refused_stream_make_one_run_per_index(api, monkeypatch):
    """Stream A is refused at its 4th item; inside that refusal, before A's cleanup, stream B resends every
    item and triggers A's three untriggered reservations under their reserved ids; then stream C resends.
    A's cleanup must not free those indices for C to reserve again under new ids (9 rows for runCount 6)."""
    batch = api.post("/api/v3/batches", {"runCount": 6}).json()
    items = [{"index": i, "task": "hello"} for i in range(6)]
    lines = [line.encode() for line in _ndjson(items).splitlines()]
    streams = {}

    def stream_b(env, buffer, cfg, now_ms):
        streams["B"] = batches.ingest(env, batch["id"], lines, buffer=buffer, cfg=cfg, now_ms=now_ms)

    _refuse_the_nth_trigger(monkeypatch, 4, inside=stream_b)
    refused = api.post(f"/api/v3/batches/{batch['id']}/items", _ndjson(items), "application/x-ndjson")
    assert refused.status_code == 429
    assert (streams["B"].accepted, streams["B"].deduplicated, streams["B"].sealed) == (3, 3, True)

    c = api.stream(batch["id"], items)

    _one_run_per_index(batch["id"], 6)
    assert (c["itemsAccepted"], c["itemsDeduplicated"], c["sealed"]) == (0, 6, True)
