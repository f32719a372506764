"""Hostile input over HTTP (docs/api.md#bad-input): a 4xx JSON error naming the field, never Django's HTML 500,
and nothing written. Unknown ``/api/`` routes and anything a view lets escape answer JSON too."""

from __future__ import annotations

import json
import logging

import pytest
from django.db import DataError, IntegrityError, ProgrammingError

from runs.models import BatchTaskRun, TaskRun
from tests.factories import trigger_run
from tests.runs import test_api_input
from tests.runs.test_api_input import TRIGGER, assert_error

api = test_api_input.api  # the same fixture: an enrolled org whose every trigger would be buffered

pytestmark = pytest.mark.django_db

MAX_DEPTH = 100


def trigger_body(payload: object = "{}", **options: object) -> str:
    """A trigger body as JSON text. ``json.dumps`` writes a lone surrogate as a ``\\ud800`` escape and a
    non-finite float as the ``NaN`` / ``Infinity`` literal, both of which Python's ``json.loads`` accepts."""
    return json.dumps({"payload": payload, "options": options})


def nested(levels: int, leaf: object = 1) -> object:
    """``levels`` levels of objects around ``leaf``: nested(2) == {"a": {"a": 1}}."""
    value = leaf
    for _ in range(levels):
        value = {"a": value}
    return value


def strict_json(response):
    """The body as standards JSON: NaN / Infinity literals are not JSON and fail here."""

    def refuse(literal: str) -> None:
        raise AssertionError(f"{literal} in the response body")

    return json.loads(response.content, parse_constant=refuse)


# ------------------------------------------------------------------------------------------- surrogates


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (trigger_body("\ud800"), "payload"),
        (trigger_body({"a": ["\udfff"]}), "payload"),
        (trigger_body(tags=["ok", "\ud800"]), "options.tags"),
        (trigger_body(idempotencyKey="k\ud800"), "options.idempotencyKey"),
        (trigger_body(metadata={"\ud800": 1}), "options.metadata"),
        (trigger_body(metadata={"a": {"b": "\ud800"}}), "options.metadata"),
        (trigger_body(queue="\ud800"), "options.queue"),
        (trigger_body(concurrencyKey="\ud800"), "options.concurrencyKey"),
    ],
)
def test_lone_surrogate_in_a_trigger_is_422_naming_the_field_and_writes_nothing(api, body, field):
    assert_error(api.post(TRIGGER, body), 422, field, "surrogate")
    assert api.nothing_written()


def test_lone_surrogate_on_the_other_endpoints_is_422_naming_the_field(api):
    run_id = api.post(TRIGGER, {"payload": "{}"}).json()["id"]
    assert_error(api.post(f"/api/v1/runs/{run_id}/tags", '{"tags": ["\\ud800"]}'), 422, "tags", "surrogate")
    assert api.get(f"/api/v3/runs/{run_id}").json()["tags"] == []
    response = api.post("/api/v1/idempotencyKeys/k/reset", '{"taskIdentifier": "\\ud800"}')
    assert_error(response, 422, "taskIdentifier", "surrogate")
    response = api.post("/api/v3/batches", '{"runCount": 1, "idempotencyKey": "\\ud800"}')
    assert_error(response, 422, "idempotencyKey", "surrogate")
    assert not BatchTaskRun.objects.exists()


def test_lone_surrogate_in_a_batch_item_is_422_naming_line_and_field(api):
    batch = api.post("/api/v3/batches", {"runCount": 1}).json()
    line = '{"index": 0, "task": "hello", "payload": "\\ud800"}\n'
    response = api.post(f"/api/v3/batches/{batch['id']}/items", line, content_type="application/x-ndjson")
    assert_error(response, 422, "line 1", "payload", "surrogate")
    assert api.nothing_written()


# ------------------------------------------------------------------------------------- non-finite numbers


@pytest.mark.parametrize("field", ["priority", "maxDuration", "ttl", "maxAttempts", "concurrencyKey"])
@pytest.mark.parametrize("literal", ["Infinity", "-Infinity", "NaN", "1e999"])
def test_non_finite_number_option_is_400_naming_the_field(api, field, literal):
    body = '{"payload": "{}", "options": {"%s": %s}}' % (field, literal)  # noqa: UP031  (JSON braces)
    assert_error(api.post(TRIGGER, body), 400, f"options.{field}")
    assert api.nothing_written()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"payload": {"a": [1, NaN]}}', "payload"),
        ('{"payload": 1e999}', "payload"),
        ('{"options": {"metadata": {"a": Infinity}}}', "options.metadata"),
    ],
)
def test_non_finite_number_in_a_json_value_is_422_naming_the_field(api, body, field):
    assert_error(api.post(TRIGGER, body), 422, field, "NaN or Infinity")
    assert api.nothing_written()


def test_non_finite_number_in_a_batch_item_is_422_naming_line_and_field(api):
    batch = api.post("/api/v3/batches", {"runCount": 1}).json()
    line = '{"index": 0, "task": "hello", "options": {"priority": Infinity}}\n'
    response = api.post(f"/api/v3/batches/{batch['id']}/items", line, content_type="application/x-ndjson")
    assert_error(response, 422, "line 1", "options.priority")
    assert api.nothing_written()


# ------------------------------------------------------------------------------------------- overflow


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"delay": "99999999999d"}, "options.delay"),
        ({"delay": "9" * 5000 + "s"}, "options.delay"),
        ({"delay": "9999-12-31T23:59:59-14:00"}, "options.delay"),
        ({"delay": "2999-01-01T00:00:00Z"}, "options.delay"),
        ({"ttl": "99999999999d"}, "options.ttl"),
        ({"ttl": 1e300}, "options.ttl"),
        ({"idempotencyKey": "k", "idempotencyKeyTTL": "99999999999d"}, "options.idempotencyKeyTTL"),
    ],
)
def test_overflowing_duration_or_date_is_400_naming_the_field(api, options, field):
    assert_error(api.post(TRIGGER, {"payload": "{}", "options": options}), 400, field)
    assert api.nothing_written()


def test_durations_up_to_the_limit_are_accepted(api):
    response = api.post(TRIGGER, {"options": {"delay": "36500d", "ttl": "36500d", "idempotencyKey": "k",
                                              "idempotencyKeyTTL": "36500d"}})  # fmt: skip
    assert response.status_code == 200, response.content
    run = api.get(f"/api/v3/runs/{response.json()['id']}").json()
    assert (run["status"], run["ttl"]) == ("DELAYED", "36500d")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("filter[createdAt][period]", "99999999999d"),
        ("filter[createdAt][period]", "9" * 5000 + "d"),
        ("filter[createdAt][from]", "99999999999999999999"),
        ("filter[createdAt][to]", "-99999999999999999999"),
    ],
)
def test_overflowing_list_filter_is_400_naming_the_parameter(api, name, value):
    assert_error(api.get("/api/v1/runs", data={name: value}), 400, name)


def test_extreme_but_representable_list_dates_answer_200(api):
    response = api.get("/api/v1/runs", data={"filter[createdAt][from]": "-62135596800000",
                                             "filter[createdAt][to]": "253402300799999"})  # fmt: skip
    assert response.status_code == 200, response.content


# -------------------------------------------------------------------------------------------- nesting


def test_body_nested_too_deep_to_parse_is_400(api):
    body = '{"payload": ' + "[" * 5000 + "]" * 5000 + "}"
    assert_error(api.post(TRIGGER, body), 400, "nested deeper than 100 levels")
    assert api.nothing_written()


@pytest.mark.parametrize("levels", [MAX_DEPTH - 1, 500])
def test_metadata_nested_too_deep_is_400_naming_the_field(api, levels):
    response = api.post(TRIGGER, {"payload": "{}", "options": {"metadata": nested(levels)}})
    assert_error(response, 400, "options.metadata", "nested deeper than 100 levels")
    assert api.nothing_written()


def test_body_nested_exactly_to_the_limit_is_accepted_and_readable(api):
    metadata = nested(MAX_DEPTH - 2)  # body → options → metadata: 100 levels in all
    response = api.post(TRIGGER, {"payload": "{}", "options": {"metadata": metadata}})
    assert response.status_code == 200, response.content
    run = api.get(f"/api/v3/runs/{response.json()['id']}")
    assert run.status_code == 200
    assert run.json()["metadata"] == metadata


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v3/batches", '{"runCount": 1, "x": ' + "[" * 5000 + "]" * 5000 + "}"),
        ("/api/v1/idempotencyKeys/k/reset", '{"taskIdentifier": "t", "x": ' + "[" * 5000 + "]" * 5000 + "}"),
    ],
)
def test_other_bodies_nested_too_deep_are_400(api, path, body):
    assert_error(api.post(path, body), 400, "nested deeper than 100 levels")
    assert not BatchTaskRun.objects.exists()


@pytest.mark.parametrize(("levels", "status"), [(5000, 400), (150, 422)])
def test_batch_item_nested_too_deep_is_refused_and_writes_nothing(api, levels, status):
    batch = api.post("/api/v3/batches", {"runCount": 1}).json()
    line = '{"index": 0, "task": "hello", "payload": ' + "[" * levels + "]" * levels + "}\n"
    response = api.post(f"/api/v3/batches/{batch['id']}/items", line, content_type="application/x-ndjson")
    assert_error(response, status, "nested deeper than 100 levels")
    assert api.nothing_written()


# ------------------------------------------------------------------------------------------------ NUL


@pytest.mark.parametrize(
    ("method", "path", "field"),
    [
        ("post", "/api/v1/tasks/hel%00lo/trigger", "taskIdentifier"),
        ("get", "/api/v3/runs/run_a%00b", "runId"),
        ("post", "/api/v2/runs/run_a%00b/cancel", "runId"),
        ("post", "/api/v1/runs/run_a%00b/tags", "runId"),
        ("get", "/api/v2/batches/batch_a%00b", "batchId"),
        ("post", "/api/v3/batches/batch_a%00b/items", "batchId"),
        ("post", "/api/v1/idempotencyKeys/a%00b/reset", "idempotencyKey"),
    ],
)
def test_nul_in_a_path_segment_is_400_naming_it(api, method, path, field):
    if method == "get":
        response = api.get(path)
    elif path.endswith("/items"):
        response = api.post(path, '{"index": 0, "task": "x"}\n', content_type="application/x-ndjson")
    else:
        response = api.post(path, {"tags": ["x"], "taskIdentifier": "t"})
    assert_error(response, 400, field, "NUL")
    assert api.nothing_written()


@pytest.mark.parametrize(
    "name", ["filter[taskIdentifier]", "filter[tag]", "filter[batch]", "filter[queue]", "filter[machine]"]
)
def test_nul_in_a_list_parameter_is_400_naming_it(api, name):
    assert_error(api.get("/api/v1/runs", data={name: "a\x00b"}), 400, name, "NUL")


def test_nul_in_a_query_parameter_name_is_400(api):
    assert_error(api.get("/api/v1/runs?filter%00x=1"), 400, "query parameter", "NUL")


@pytest.mark.parametrize(
    "raw", ["2024-01-01T00:00:00+00:00|run_a\x00b", "2024-01-01T00:00:00|run_a", "9999-12-31T23:59:59-14:00|run_a"]
)
def test_bad_cursor_is_400_naming_the_parameter(api, raw):
    import base64

    cursor = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
    assert_error(api.get("/api/v1/runs", data={"page[after]": cursor}), 400, "page[after]")


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/v1/idempotencyKeys/k/reset", '{"taskIdentifier": "a\\u0000b"}', "taskIdentifier"),
        ("/api/v3/batches", '{"runCount": 1, "idempotencyKey": "a\\u0000b"}', "idempotencyKey"),
    ],
)
def test_nul_in_a_body_string_is_422_naming_the_field(api, path, body, field):
    assert_error(api.post(path, body), 422, field, "NUL")
    assert not BatchTaskRun.objects.exists()


def test_nul_in_a_tag_added_to_a_buffered_run_is_422_and_not_stored(api):
    run_id = api.post(TRIGGER, {"payload": "{}"}).json()["id"]
    assert_error(api.post(f"/api/v1/runs/{run_id}/tags", '{"tags": ["a\\u0000"]}'), 422, "tags", "NUL")
    assert api.get(f"/api/v3/runs/{run_id}").json()["tags"] == []


# ------------------------------------------------------------------------------ stored runs, any payload


@pytest.mark.parametrize(
    ("payload", "payload_type", "shown"),
    [
        ("{not json", "application/json", "{not json"),
        ('{"a": NaN}', "application/json", '{"a": NaN}'),
        ("[1e999]", "application/json", "[1e999]"),
        ('{"json": Infinity}', "application/super+json", '{"json": Infinity}'),
        ("[1, 2]", "application/super+json", "[1, 2]"),
        ("[" * 5000 + "]" * 5000, "application/json", "[" * 5000 + "]" * 5000),
    ],
)
def test_a_stored_payload_that_cannot_be_decoded_is_shown_as_its_text(api, payload, payload_type, shown):
    run = trigger_run(api.env, payload=payload, payload_type=payload_type)
    response = api.get(f"/api/v3/runs/{run.id}")
    assert response.status_code == 200, response.content[:300]
    assert strict_json(response)["payload"] == shown


# --------------------------------------------------------------------------- unknown routes, escapes


@pytest.mark.parametrize("path", ["/api/v1/nothing", "/api/v3/runs/", "/api/v3/runs/run_x/extra", "/api/"])
def test_unknown_api_route_is_a_json_404(client, path):
    for response in (client.get(path), client.post(path, data="{}", content_type="application/json")):
        assert response.status_code == 404
        assert response["Content-Type"].startswith("application/json")
        assert response.json() == {"error": "Not found"}
        assert response["x-request-id"]


def test_unknown_route_outside_the_api_stays_django_html(client):
    response = client.get("/not-the-api/x")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


@pytest.mark.parametrize("debug", [False, True])
def test_an_exception_escaping_a_view_is_a_json_500_with_its_request_id(api, monkeypatch, caplog, settings, debug):
    settings.DEBUG = debug

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("runs.queries.retrieve", boom)
    with caplog.at_level(logging.ERROR):
        response = api.get("/api/v3/runs/run_x")
    assert response.status_code == 500
    body = response.json()
    assert body["error"] == "Internal server error"
    assert body["requestId"] == response["x-request-id"]
    logged = [r for r in caplog.records if getattr(r, "request_id", None) == body["requestId"]]
    assert logged and logged[0].exc_info and isinstance(logged[0].exc_info[1], RuntimeError)


def test_a_sane_incoming_request_id_is_kept_and_every_api_answer_carries_one(api):
    response = api.get("/api/v1/runs", HTTP_X_REQUEST_ID="lb-1234.abc")
    assert response.status_code == 200
    assert response["x-request-id"] == "lb-1234.abc"
    generated = api.get("/api/v1/runs", HTTP_X_REQUEST_ID="bad id\nwith newline")["x-request-id"]
    assert generated and "\n" not in generated and generated != "bad id\nwith newline"


@pytest.mark.parametrize("exc", [DataError, IntegrityError, ProgrammingError])
def test_any_database_error_escaping_a_view_is_a_retryable_json_503(api, monkeypatch, exc):
    def fail(*args, **kwargs):
        raise exc("refused")

    monkeypatch.setattr("runs.queries.retrieve", fail)
    response = api.get("/api/v3/runs/run_x")
    assert_error(response, 503, "database")
    assert response["x-should-retry"] == "true"
    assert TaskRun.objects.count() == 0  # the test's connection is still usable
