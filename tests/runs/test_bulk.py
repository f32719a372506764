"""Bulk actions (``runs.bulk``, ``/api/v1/bulk-actions``): cancel and replay by filter or run ids over rows
and buffered entries, in chunks with progress counts, abort between chunks, tenancy, bad input.
Real Postgres and Redis; the drain that follows a bulk cancel is the real drain round."""

from __future__ import annotations

import json
import time

import pytest
from django.conf import settings

from buffer.buffer import Buffer
from buffer.values import AcceptStatus
from drainer.drain import run_round
from drainer.limits import DrainLimits
from mollifier_project.clock import from_ms
from runs import bulk, engine
from runs.auth import EnvContext
from runs.bulk_schemas import CreateBulkActionBody
from runs.models import BulkAction, BulkActionStatus, RunStatus, TaskRun
from runs.snapshot import to_snapshot
from runs.tenants import ensure_tenant, issue_api_key
from tests.factories import EnvironmentFactory, SnapshotFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def buffer(key_prefix, mollifier_settings) -> Buffer:
    mollifier_settings(SHARDS=1, DRAINER_ENABLED=True, ENABLED=True)
    return Buffer.from_settings()


def ctx(env) -> EnvContext:
    return EnvContext(env.id, env.org_id, env.slug, env.type, env.org.slug, True)


def now() -> int:
    return int(time.time() * 1000)


def park(buffer: Buffer, snapshot) -> str:
    result = buffer.accept(
        run_id=snapshot.id, env_id=snapshot.env_id, org_id=snapshot.org_id, snapshot=to_snapshot(snapshot),
        now_ms=now(), idempotency=None, max_per_env=1_000_000,
    )  # fmt: skip
    assert result.status is AcceptStatus.ACCEPTED
    return snapshot.id


def runs(buffer, env, *, rows: int, buffered: int, **fields) -> tuple[list[str], list[str]]:
    base = now() - 60_000
    row_ids = []
    for i in range(rows):
        s = SnapshotFactory(env=env, created_at=from_ms(base + i), **fields)
        engine.trigger(s)
        row_ids.append(s.id)
    parked = [
        park(buffer, SnapshotFactory(env=env, created_at=from_ms(base + rows + i), **fields)) for i in range(buffered)
    ]
    return row_ids, parked


def make(env, **body) -> BulkAction:
    return bulk.create(ctx(env), CreateBulkActionBody.model_validate(body), now_ms=now())


def drain_all(buffer):
    limits = DrainLimits.from_settings(settings.MOLLIFIER)
    for _ in range(1000):
        if run_round(buffer, shard=0, limits=limits, now_ms=now()).leased == 0:
            return
    raise AssertionError("the drain did not finish")


def test_cancel_by_ids_cancels_rows_and_buffered_runs_and_the_drain_writes_canceled_rows(buffer):
    env = EnvironmentFactory()
    rows, parked = runs(buffer, env, rows=3, buffered=4)
    finished = SnapshotFactory(env=env)
    engine.trigger(finished)
    engine.cancel_run(finished.id, "earlier", from_ms(now()))
    action = make(env, action="cancel", runIds=[*rows, *parked, finished.id, "run_missing"])

    progress = bulk.execute(action.id, buffer=buffer)

    action.refresh_from_db()
    assert progress.finished and action.status == BulkActionStatus.COMPLETED and action.completed_at
    assert (action.total, action.success, action.failure) == (9, 7, 2)
    assert set(TaskRun.objects.filter(id__in=rows).values_list("status", flat=True)) == {RunStatus.CANCELED}
    drain_all(buffer)
    statuses = dict(TaskRun.objects.filter(env=env).values_list("id", "status"))
    assert {statuses[r] for r in parked} == {RunStatus.CANCELED}
    assert not TaskRun.objects.filter(env=env).exclude(status=RunStatus.CANCELED).exists()


def test_cancel_by_filter_walks_both_sides_in_chunks_with_progress_and_honours_abort(buffer, monkeypatch):
    monkeypatch.setattr(bulk, "CHUNK", 50)
    env = EnvironmentFactory()
    rows, parked = runs(buffer, env, rows=40, buffered=160, task_identifier="storm")
    calm = runs(buffer, env, rows=2, buffered=2, task_identifier="calm")
    action = make(env, action="cancel", filter={"taskIdentifier": "storm"})

    assert not bulk.execute(action.id, buffer=buffer, max_chunks=2).finished
    action.refresh_from_db()
    assert (action.total, action.success, action.failure, action.chunks) == (100, 100, 0, 2)
    assert action.status == BulkActionStatus.PENDING

    bulk.abort(ctx(env), action.id, now_ms=now())
    assert bulk.execute(action.id, buffer=buffer).chunks == 0  # aborted between chunks: nothing more
    action.refresh_from_db()
    assert action.status == BulkActionStatus.ABORTED and action.success == 100

    again = make(env, action="cancel", filter={"taskIdentifier": "storm", "status": ["QUEUED", "DELAYED"]})
    assert bulk.execute(again.id, buffer=buffer).finished
    again.refresh_from_db()
    assert (again.status, again.success, again.failure) == (BulkActionStatus.COMPLETED, 100, 0)
    drain_all(buffer)
    assert set(TaskRun.objects.filter(id__in=rows + parked).values_list("status", flat=True)) == {RunStatus.CANCELED}
    assert set(TaskRun.objects.filter(id__in=calm[0] + calm[1]).values_list("status", flat=True)) == {RunStatus.PENDING}


def test_a_filter_selects_only_runs_triggered_before_the_action(buffer):
    env = EnvironmentFactory()
    _, before = runs(buffer, env, rows=0, buffered=3)
    action = make(env, action="cancel", filter={"status": "QUEUED"})
    later = park(buffer, SnapshotFactory(env=env, created_at=from_ms(now() + 5_000)))
    bulk.execute(action.id, buffer=buffer)
    entries = dict(
        zip([*before, later], buffer.get_many([*before, later], org_id=env.org_id, snapshot=False), strict=True)
    )
    assert all(entries[r].cancelled for r in before)
    assert not entries[later].cancelled


def test_replay_by_ids_makes_new_runs_through_the_trigger_path_once_even_if_a_chunk_reruns(buffer):
    env = EnvironmentFactory()
    rows, parked = runs(buffer, env, rows=2, buffered=2, task_identifier="again", tags=["t"])
    action = make(env, action="replay", runIds=[*rows, *parked])
    bulk.execute(action.id, buffer=buffer)
    action.refresh_from_db()
    assert (action.status, action.success, action.failure) == (BulkActionStatus.COMPLETED, 4, 0)
    BulkAction.objects.filter(id=action.id).update(status=BulkActionStatus.PENDING, position=0)  # a crash re-run
    bulk.execute(action.id, buffer=buffer)
    drain_all(buffer)
    replays = TaskRun.objects.filter(env=env).exclude(id__in=rows + parked)
    assert replays.count() == 4
    assert {(r.task_identifier, tuple(r.tags), r.payload) for r in replays} == {("again", ("t",), '{"json":{"n":1}}')}


def test_cancel_of_another_envs_runs_by_id_changes_nothing(buffer):
    env, other = EnvironmentFactory(), EnvironmentFactory()
    rows, parked = runs(buffer, other, rows=1, buffered=1)
    action = make(env, action="cancel", runIds=rows + parked)
    bulk.execute(action.id, buffer=buffer)
    action.refresh_from_db()
    assert (action.success, action.failure) == (0, 2)
    assert TaskRun.objects.get(id=rows[0]).status == RunStatus.PENDING
    entry = buffer.get(parked[0], org_id=other.org_id, snapshot=False)
    assert entry is not None and not entry.cancelled


# ----------------------------------------------------------------------------------------------- HTTP


@pytest.fixture
def api(client, buffer):
    def key(name):
        tenant = ensure_tenant(name, "dev", enrol=True)
        return tenant.env, {"HTTP_AUTHORIZATION": f"Bearer {issue_api_key(tenant.env)[1]}"}

    class Api:
        env, auth = key("bulk-org")
        other_env, other_auth = key("bulk-other")

        def post(self, path, body, auth=None):
            data = body if isinstance(body, str) else json.dumps(body)
            return client.post(path, data=data, content_type="application/json", **(auth or self.auth))

        def get(self, path, auth=None, **params):
            return client.get(path, data=params, **(auth or self.auth))

    return Api()


def test_http_create_runs_the_task_and_retrieve_shows_counts(
    api, buffer, celery_eager, django_capture_on_commit_callbacks
):
    _, parked = runs(buffer, api.env, rows=0, buffered=3)
    with django_capture_on_commit_callbacks(execute=True):
        created = api.post("/api/v1/bulk-actions", {"action": "cancel", "runIds": parked, "name": "stop it"})
    assert created.status_code == 200, created.content
    got = api.get(f"/api/v1/bulk-actions/{created.json()['id']}").json()
    assert got["type"] == "CANCEL" and got["status"] == "COMPLETED" and got["name"] == "stop it"
    assert got["counts"] == {"total": 3, "success": 3, "failure": 0}
    assert got["createdAt"].endswith("Z") and got["completedAt"].endswith("Z")
    listed = api.get("/api/v1/bulk-actions", **{"page[size]": "1"}).json()
    assert [a["id"] for a in listed["data"]] == [got["id"]]


def test_http_another_envs_key_gets_404_and_lists_nothing(api, buffer):
    action = make(api.env, action="cancel", runIds=["run_x"])
    for path in (f"/api/v1/bulk-actions/{action.id}", f"/api/v1/bulk-actions/{action.id}/abort"):
        response = (
            api.post(path, "", auth=api.other_auth) if path.endswith("abort") else api.get(path, auth=api.other_auth)
        )
        assert response.status_code == 404, path
        assert response.json() == {"error": "Bulk action not found"}
    assert api.get("/api/v1/bulk-actions", auth=api.other_auth).json()["data"] == []
    action.refresh_from_db()
    assert action.status == BulkActionStatus.PENDING  # the foreign abort did nothing


def test_http_abort_answers_the_id_and_the_action_shows_aborted(api, buffer):
    action = make(api.env, action="cancel", runIds=["run_x"])
    assert api.post(f"/api/v1/bulk-actions/{action.id}/abort", "").json() == {"id": action.id}
    assert api.get(f"/api/v1/bulk-actions/{action.id}").json()["status"] == "ABORTED"


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"action": "cancel"}, "Exactly one of filter or runIds"),
        ({"action": "cancel", "runIds": ["run_a"], "filter": {"status": "QUEUED"}}, "Exactly one of filter or runIds"),
        ({"action": "cancel", "filter": {}}, "At least one filter"),
        ({"action": "cancel", "filter": {"taskIdentifier": " "}}, "At least one filter"),
        ({"action": "cancel", "filter": {"status": "PENDING"}}, "filter.status"),
        ({"action": "cancel", "filter": {"taskId": "x"}}, "filter.taskId"),
        ({"action": "cancel", "filter": {"period": "1y"}}, "filter.period"),
        ({"action": "cancel", "filter": {"from": "yesterday"}}, "filter.from"),
        ({"action": "cancel", "runIds": []}, "runIds"),
        ({"action": "cancel", "runIds": ["run_a"], "targetRegion": "eu"}, "targetRegion"),
        ({"action": "delete", "runIds": ["run_a"]}, "action"),
        ({"action": "cancel", "runIds": ["run_a"], "name": "x" * 256}, "name"),
    ],
)
def test_http_bad_body_is_400_naming_the_field(api, body, names):
    response = api.post("/api/v1/bulk-actions", body)
    assert response.status_code == 400, response.content
    assert names in response.json()["error"]
    assert not BulkAction.objects.exists()


def test_http_list_runs_with_a_bad_filter_is_400_naming_it(api):
    response = api.get("/api/v1/runs", **{"filter[isTest]": "perhaps"})
    assert response.status_code == 400
    assert "filter[isTest]" in response.json()["error"]
