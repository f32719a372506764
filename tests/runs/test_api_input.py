"""Bad input gets a clear JSON error naming the field, with the status docs/api.md gives — and writes nothing."""

from __future__ import annotations

import json

import pytest

from runs.models import BatchTaskRun, TaskRun
from runs.tenants import ensure_tenant, issue_api_key

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(client, key_prefix, mollifier_settings, redis_client):
    """A test client with a valid key for an enrolled org whose every trigger would be buffered."""
    mollifier_settings(ENABLED=True, TRIP_THRESHOLD=0)
    tenant = ensure_tenant("input-org", "dev", enrol=True)
    _, secret = issue_api_key(tenant.env)

    class Api:
        auth = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
        env = tenant.env

        def post(self, path, body, content_type="application/json", **extra):
            data = body if isinstance(body, str | bytes) else json.dumps(body)
            return client.post(path, data=data, content_type=content_type, **{**self.auth, **extra})

        def get(self, path, **extra):
            return client.get(path, **{**self.auth, **extra})

        def nothing_written(self):
            return not TaskRun.objects.exists() and not list(redis_client.scan_iter(match=f"{key_prefix}:*:e:*"))

    return Api()


TRIGGER = "/api/v1/tasks/hello/trigger"


def assert_error(response, status, *fragments):
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) >= {"error"}
    for fragment in fragments:
        assert fragment in body["error"], body
    return body


def test_empty_body_is_400_request_body_is_empty(api):
    assert_error(api.post(TRIGGER, ""), 400, "Request body is empty")
    assert api.nothing_written()


def test_invalid_json_is_400(api):
    assert_error(api.post(TRIGGER, "{nope"), 400, "Invalid JSON")
    assert api.nothing_written()


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"maxAttempts": "three"}, "options.maxAttempts"),
        ({"tags": [1, 2]}, "options.tags"),
        ({"machine": "huge-9x"}, "options.machine"),
        ({"queue": {"name": ""}}, "options.queue.name"),
        ({"metadata": "not-an-object"}, "options.metadata"),
        ({"priority": "high"}, "options.priority"),
    ],
)
def test_wrong_types_are_400_naming_the_field(api, options, field):
    assert_error(api.post(TRIGGER, {"payload": "{}", "options": options}), 400, field)
    assert api.nothing_written()


def test_payload_over_the_limit_is_413(api, mollifier_settings):
    mollifier_settings(ENABLED=True, TRIP_THRESHOLD=0, MAX_PAYLOAD_BYTES=1024)
    assert_error(api.post(TRIGGER, {"payload": "x" * 2000}), 413, "payload", "1024")
    assert api.nothing_written()


def test_eleven_tags_are_422(api):
    tags = [f"t{i}" for i in range(11)]
    assert_error(api.post(TRIGGER, {"options": {"tags": tags}}), 422, "Runs can only have 10 tags", "11")
    assert api.nothing_written()


@pytest.mark.parametrize(("options", "field"), [({"delay": "5x"}, "options.delay"), ({"ttl": "soon"}, "options.ttl")])
def test_bad_duration_is_400_naming_the_field(api, options, field):
    assert_error(api.post(TRIGGER, {"options": options}), 400, field)
    assert api.nothing_written()


@pytest.mark.parametrize("header", [None, "Bearer tr_dev_unknownunknownunknownunknown00", "Basic abc", "Bearer "])
def test_missing_or_unknown_key_is_401(client, header):
    extra = {"HTTP_AUTHORIZATION": header} if header else {}
    response = client.post(TRIGGER, data="{}", content_type="application/json", **extra)
    assert_error(response, 401, "Invalid or Missing API key")
    assert not TaskRun.objects.exists()


def test_batch_items_not_ndjson_are_415(api):
    batch = api.post("/api/v3/batches", {"runCount": 1}).json()
    line = json.dumps({"index": 0, "task": "hello", "payload": "{}"})
    assert_error(api.post(f"/api/v3/batches/{batch['id']}/items", line), 415, "application/x-ndjson")
    assert api.nothing_written()


def test_batch_run_count_out_of_range_is_400(api):
    assert_error(api.post("/api/v3/batches", {"runCount": 0}), 400, "runCount")
    assert_error(api.post("/api/v3/batches", {"runCount": 1001}), 400, "runCount")
    assert not BatchTaskRun.objects.exists()


def ndjson(*items):
    return "\n".join(json.dumps(item) for item in items) + "\n"


def test_batch_items_with_more_items_than_run_count_are_422_and_write_nothing(api):
    batch = api.post("/api/v3/batches", {"runCount": 2}).json()
    body = ndjson(*({"index": i, "task": "hello", "payload": "{}"} for i in range(3)))
    response = api.post(f"/api/v3/batches/{batch['id']}/items", body, content_type="application/x-ndjson")
    assert_error(response, 422, "index 2", "runCount 2")
    assert api.nothing_written()
    assert BatchTaskRun.objects.get(id=batch["id"]).items_received == 0


def test_batch_item_with_invalid_json_line_is_400_and_writes_nothing(api):
    batch = api.post("/api/v3/batches", {"runCount": 2}).json()
    body = ndjson({"index": 0, "task": "hello"}) + "{broken\n"
    response = api.post(f"/api/v3/batches/{batch['id']}/items", body, content_type="application/x-ndjson")
    assert_error(response, 400, "line 2", "Invalid JSON")
    assert api.nothing_written()


def test_batch_item_with_eleven_tags_is_422_and_writes_nothing(api):
    batch = api.post("/api/v3/batches", {"runCount": 2}).json()
    body = ndjson(
        {"index": 0, "task": "hello"},
        {"index": 1, "task": "hello", "options": {"tags": [f"t{i}" for i in range(11)]}},
    )
    response = api.post(f"/api/v3/batches/{batch['id']}/items", body, content_type="application/x-ndjson")
    assert_error(response, 422, "10 tags")
    assert api.nothing_written()


def test_duplicate_indices_are_deduplicated_not_run_twice(api):
    batch = api.post("/api/v3/batches", {"runCount": 2}).json()
    url = f"/api/v3/batches/{batch['id']}/items"
    body = ndjson(*({"index": i % 2, "task": "hello", "payload": "{}"} for i in range(4)))
    first = api.post(url, body, content_type="application/x-ndjson").json()
    assert (first["itemsAccepted"], first["itemsDeduplicated"], first["sealed"]) == (2, 2, True)
    again = api.post(url, body, content_type="application/x-ndjson").json()  # the SDK resends the stream
    assert (again["itemsAccepted"], again["itemsDeduplicated"], again["sealed"]) == (0, 4, True)


def test_unknown_batch_is_404(api):
    response = api.post("/api/v3/batches/batch_nope/items", ndjson({"index": 0, "task": "x"}),
                        content_type="application/x-ndjson")  # fmt: skip
    assert_error(response, 404, "Batch not found")


def test_tags_endpoint_refuses_eleven_tags_with_422(api):
    run_id = api.post(TRIGGER, {"payload": "{}"}).json()["id"]
    response = api.post(f"/api/v1/runs/{run_id}/tags", {"tags": [f"t{i}" for i in range(11)]})
    assert_error(response, 422, "10 tags")


def test_list_with_bad_page_size_is_400_naming_the_parameter(api):
    assert_error(api.get("/api/v1/runs", data={"page[size]": "500"}), 400, "page[size]")
    assert_error(api.get("/api/v1/runs", data={"filter[status]": "PENDING"}), 400, "filter[status]")


def test_list_accepts_every_sdk_status_even_those_no_run_here_has(api):
    response = api.get("/api/v1/runs", data={"filter[status]": "WAITING,DEQUEUED"})
    assert response.status_code == 200
    assert response.json()["data"] == []


def test_bad_ttl_is_named_as_ttl_even_with_a_good_delay(api):
    assert_error(api.post(TRIGGER, {"options": {"delay": "5m", "ttl": "5"}}), 400, "options.ttl")


@pytest.mark.django_db(transaction=True)
def test_database_down_on_a_cold_key_is_a_503_json_error_not_html(client, key_prefix):
    from django.db import connection

    from runs import auth

    auth.clear_cache()
    saved = connection.settings_dict["PORT"]
    connection.close()
    connection.settings_dict["PORT"] = "1"
    try:
        response = client.get("/api/v1/runs", HTTP_AUTHORIZATION="Bearer tr_dev_" + "a" * 32)
    finally:
        connection.close()
        connection.settings_dict["PORT"] = saved
    assert_error(response, 503, "database")
    assert response.headers["x-should-retry"] == "true"
