"""Schemathesis fuzzes a live gunicorn from the served OpenAPI document (docs/api.md#fuzzing).

One server and one test, in four phases:

1. **Tenancy.** The owner env's key makes a few runs (buffered, delayed, cancelled, materialised, one with an
   idempotency key) and a batch. Keys of two other envs (one in the same org, one in another) then send
   generated requests to retrieve, cancel and tag those runs, read the batch, stream items into it and reset
   the key. Every answer is 404 (422 only for a tags body no row could hold), never 200 or 403. The owner's
   runs are unchanged afterwards, and the intruders' run lists never show them.
2. **Coverage.** Schemathesis' boundary cases of every operation, positive and negative, with the owner's key.
3. **Fuzz.** Every operation gets ``FUZZ_EXAMPLES`` positive and as many negative cases. The path parameters
   are sometimes the owner's real run and batch ids, so success answers are checked too. Most cases carry the
   owner's key, some a wrong key or none.
4. **Probes** for the statuses generated data cannot reach (415, 413).

Checks on every answer: no 5xx; a 4xx or 5xx is JSON with an ``error`` string (except gunicorn's own 414 for
a request line over its limit); the status, content type, headers and body are the documented ones
(schemathesis' conformance checks); a wrong or missing key is 401, and the owner's key never is.

The totals are printed as ``fuzz: requests=… 2xx=… 4xx={…} 5xx=…``. Generation is derandomized, so ``make test``
is repeatable. ``FUZZ_RANDOM=1`` explores new cases, and ``FUZZ_EXAMPLES=N`` changes the budget.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import redis as redis_lib
import requests
import schemathesis
from django.conf import settings
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.openapi import NDJSON_TYPES
from runs.tenants import ensure_tenant, issue_api_key
from tests.factories import trigger_run
from tests.live import Gunicorn

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))  # per operation and generation mode
TENANCY_EXAMPLES = max(5, FUZZ_EXAMPLES // 2)  # per operation and intruder key
DERANDOMIZE = os.environ.get("FUZZ_RANDOM") != "1"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
GUNICORN_REQUEST_LINE = 4094  # gunicorn's default limit_request_line
BAD_KEY = "Bearer tr_dev_" + "0" * 32
UNSTORABLE = ("\x00", *(chr(c) for c in range(0xD800, 0xE000)))


@schemathesis.serializer(*NDJSON_TYPES)
def _ndjson(ctx: schemathesis.SerializationContext, value: Any) -> bytes:
    """A batch-items body is documented as an array of items; on the wire each item is one JSON line."""
    if isinstance(value, bytes):
        return value
    return "\n".join(json.dumps(item) for item in (value if isinstance(value, list) else [value])).encode()


class Tally:
    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()

    def count(self, status: int) -> None:
        self.statuses[status] += 1

    def line(self) -> str:
        total = sum(self.statuses.values())
        ok = sum(n for s, n in self.statuses.items() if s < 400)
        client = {s: n for s, n in sorted(self.statuses.items()) if 400 <= s < 500}
        server = sum(n for s, n in self.statuses.items() if s >= 500)
        return f"fuzz: requests={total} 2xx={ok} 4xx={client} 5xx={server}"


def settings_for(examples: int) -> hypothesis_settings:
    return hypothesis_settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=DERANDOMIZE,
        suppress_health_check=list(HealthCheck),
        phases=[
            Phase.explicit,
            Phase.generate,
        ],  # no shrinking: every step is a request, and the case is reported as sent
    )


@pytest.fixture(scope="module")
def server(django_db_setup, django_db_blocker):
    prefix = f"mfuzz-{uuid.uuid4().hex[:10]}"
    live = Gunicorn(
        {
            "MOLLIFIER_ENABLED": "true",
            "MOLLIFIER_TRIP_THRESHOLD": "0",
            "MOLLIFIER_KEY_PREFIX": prefix,
            "MOLLIFIER_MUTATE_WAIT_MS": "300",
            # The fuzz judges answers to input and tenancy, not Redis' latency: on a loaded 2-core box a call
            # past the web tier's 250 ms timeout answers a correct 503 (docs/operations.md#redis-timeouts-and-the-
            # circuit-breaker) where the case expects its 404. A longer timeout (and a fence above it,
            # mollifier.E005) keeps those apart; tests/runs/test_hung_redis.py tests the timeout itself.
            "MOLLIFIER_REDIS_REQUEST_TIMEOUT_MS": "3000",
            "MOLLIFIER_REQUEST_KEY_FENCE_MS": "4000",
        }
    )
    yield live
    live.stop()
    client = redis_lib.Redis.from_url(settings.REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


class Api:
    """Sends requests to the live server and counts every answer."""

    def __init__(self, url: str, tally: Tally):
        self.url, self.tally = url, tally
        self.session = requests.Session()

    def send(self, case: schemathesis.Case, headers: dict[str, str]) -> schemathesis.Response:
        response = case.call(base_url=self.url, session=self.session, headers=headers, timeout=30)
        self.tally.count(response.status_code)
        return response

    def raw(self, method: str, path: str, headers: dict[str, str], **kwargs: Any) -> requests.Response:
        response = self.session.request(method, self.url + path, headers=headers, timeout=30, **kwargs)
        self.tally.count(response.status_code)
        return response


def too_long_for_gunicorn(response: schemathesis.Response | requests.Response) -> bool:
    """Gunicorn's own 414 for a request line over its 4094 bytes (docs/api.md#openapi-document): an HTML page."""
    request = response.request
    line = f"{request.method} {request.path_url} HTTP/1.1"
    return response.status_code == 414 and len(line.encode()) > GUNICORN_REQUEST_LINE


def assert_error_shape(response: schemathesis.Response | requests.Response, what: str) -> None:
    if response.status_code < 400:
        return
    if too_long_for_gunicorn(response):
        return
    headers = response.headers  # schemathesis: lower-case name → list of values
    content_type = headers.get("content-type", [""])[0] if isinstance(response, schemathesis.Response) else headers.get("Content-Type", "")  # fmt: skip
    assert content_type.startswith("application/json"), (what, response.text[:500])
    body = json.loads(response.content)
    assert isinstance(body, dict) and isinstance(body.get("error"), str), (what, response.text[:500])


def describe(case: schemathesis.Case, response: schemathesis.Response) -> str:
    return f"{case.method} {response.request.url} → {response.status_code} {response.text[:500]}"


def fuzz(strategy: st.SearchStrategy, examples: int, body: Callable[..., None], **extra: st.SearchStrategy) -> None:
    """``body`` for ``examples`` cases. The first failure is what gets reported: schemathesis steers generation by
    earlier answers, so Hypothesis' replay of a failing case can diverge and report only that it is flaky."""
    failures: list[str] = []

    @settings_for(examples)
    @given(case=strategy, **extra)
    def run(case: schemathesis.Case, **drawn: Any) -> None:
        try:
            body(case, **drawn)
        except Exception as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
            raise

    try:
        run()
    except Exception as exc:
        if failures:
            raise AssertionError(failures[0]) from exc
        raise


def storable(value: Any) -> bool:
    texts = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    return all(isinstance(t, str) and not any(c in t for c in UNSTORABLE) for t in texts)


# ------------------------------------------------------------------------------------------------ setup


def seed_owner(api: Api, secret: str, env: Any) -> dict[str, Any]:
    """The owner's runs (buffered, delayed, cancelled, materialised) and batch, made through the API."""
    auth = bearer(secret)

    def trigger(options: dict[str, Any]) -> str:
        response = api.raw("POST", "/api/v1/tasks/fuzz-task/trigger", auth, json={"payload": "{}", "options": options})
        assert response.status_code == 200, response.text
        return response.json()["id"]

    buffered = trigger({"tags": ["owner"]})
    delayed = trigger({"delay": "1h"})
    keyed = trigger({"idempotencyKey": "owner-key", "debounce": {"key": "d"}})  # debounce: written directly
    cancelled = trigger({})
    assert api.raw("POST", f"/api/v2/runs/{cancelled}/cancel", auth).status_code == 200
    row = trigger_run(env, task_identifier="fuzz-task").id
    batch = api.raw("POST", "/api/v3/batches", auth, json={"runCount": 3})
    assert batch.status_code == 202, batch.text
    batch_id = batch.json()["id"]
    items = api.raw(
        "POST", f"/api/v3/batches/{batch_id}/items", {**auth, "Content-Type": "application/x-ndjson"},
        data=json.dumps({"index": 0, "task": "fuzz-task", "payload": "{}"}),
    )  # fmt: skip
    assert items.status_code == 200, items.text
    return {"runs": [buffered, delayed, keyed, cancelled, row], "batch": batch_id, "key": "owner-key"}


def owner_view(api: Api, secret: str, run_ids: list[str]) -> dict[str, Any]:
    views = {}
    for run_id in run_ids:
        response = api.raw("GET", f"/api/v3/runs/{run_id}", bearer(secret))
        assert response.status_code == 200, response.text
        doc = response.json()
        views[run_id] = (doc["status"], doc["tags"], doc.get("idempotencyKey"))
    return views


# ------------------------------------------------------------------------------------------------- test


@pytest.mark.timeout(1200)  # 19 operations × 150 examples × 2 modes, on a shared machine
def test_fuzz_the_live_api_from_its_openapi_document(server, capsys):
    started = time.monotonic()
    tally = Tally()
    api = Api(server.url, tally)
    served = api.raw("GET", "/api/openapi.json", {})
    assert served.status_code == 200
    schema = schemathesis.openapi.from_dict(served.json())
    ops = {r.ok().label: r.ok() for r in schema.get_all_operations()}

    owner = ensure_tenant("fuzz-owner", "dev", enrol=True)
    owner_secret = issue_api_key(owner.env)[1]
    intruders = [
        issue_api_key(ensure_tenant("fuzz-owner", "prod", enrol=True).env)[1],  # same org, another env
        issue_api_key(ensure_tenant("fuzz-other", "dev").env)[1],  # another org, not enrolled
    ]
    seeded = seed_owner(api, owner_secret, owner.env)
    run_ids, batch_id = seeded["runs"], seeded["batch"]
    before = owner_view(api, owner_secret, run_ids)

    # 1. Tenancy ----------------------------------------------------------------------------------------
    def with_run_ids(label: str, mode: GenerationMode = GenerationMode.POSITIVE) -> st.SearchStrategy:
        return st.one_of([ops[label].as_strategy(mode, path_parameters={"run_id": r}) for r in run_ids])

    tenancy: dict[str, st.SearchStrategy] = {
        "GET /api/v3/runs/{run_id}": with_run_ids("GET /api/v3/runs/{run_id}"),
        "POST /api/v2/runs/{run_id}/cancel": with_run_ids("POST /api/v2/runs/{run_id}/cancel"),
        "POST /api/v1/runs/{run_id}/tags": with_run_ids("POST /api/v1/runs/{run_id}/tags"),
        "GET /api/v2/batches/{batch_id}": ops["GET /api/v2/batches/{batch_id}"].as_strategy(
            path_parameters={"batch_id": batch_id}
        ),
        "POST /api/v3/batches/{batch_id}/items": ops["POST /api/v3/batches/{batch_id}/items"].as_strategy(
            path_parameters={"batch_id": batch_id}
        ),
        "POST /api/v1/idempotencyKeys/{key}/reset": ops["POST /api/v1/idempotencyKeys/{key}/reset"].as_strategy(
            path_parameters={"key": seeded["key"]}, body={"taskIdentifier": "fuzz-task"}
        ),
    }
    for intruder in intruders:
        for label, strategy in tenancy.items():

            def probe(case: schemathesis.Case, label: str = label, intruder: str = intruder) -> None:
                response = api.send(case, bearer(intruder))
                expected = 404
                if label.endswith("/tags") and not storable((case.body or {}).get("tags")):
                    expected = 422  # the body is refused before any run is looked up
                assert response.status_code == expected, describe(case, response)
                assert_error_shape(response, label)

            fuzz(strategy, TENANCY_EXAMPLES, probe)
        listed = api.raw("GET", "/api/v1/runs", bearer(intruder), params={"page[size]": "100"})
        assert listed.status_code == 200 and not {r["id"] for r in listed.json()["data"]} & set(run_ids)
    assert owner_view(api, owner_secret, run_ids) == before, "an intruder changed the owner's runs"
    tenancy_requests = sum(tally.statuses.values())

    # 2. Coverage, then fuzz --------------------------------------------------------------------------
    def check(case: schemathesis.Case, who: str) -> None:
        headers = {"owner": bearer(owner_secret), "bad": {"Authorization": BAD_KEY}, "none": {}}[who]
        # What goes on the wire: a negative case may drop the key, and with none given the case's own
        # generated (invalid) ``Authorization`` is sent.
        sent = case.as_transport_kwargs(base_url=api.url, headers=dict(headers))["headers"]
        authorised = sent.get("Authorization") == bearer(owner_secret)["Authorization"]
        response = api.send(case, headers)
        what = describe(case, response)
        assert response.status_code < 500, what
        assert_error_shape(response, what)
        documented = case.method.lower() in schema.raw_schema["paths"][case.operation.path]
        if not documented:  # the coverage phase tries methods the route does not take
            assert response.status_code == 405, what
        # A path no route matches (a newline, a `/` in a run id) is 404 before any key is looked at, and a request
        # line too long for gunicorn never reaches the app.
        unrouted = response.status_code == 404 and json.loads(response.content) == {"error": "Not found"}
        before_auth = unrouted or too_long_for_gunicorn(response)
        public = (
            documented and schema.raw_schema["paths"][case.operation.path][case.method.lower()].get("security") == []
        )
        if documented and not before_auth and not public:  # the document, a presigned packet URL: no key needed
            assert (response.status_code == 401) is not authorised, (what, who, authorised)
        case.validate_response(response, checks=CHECKS, headers=headers)

    both = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    coverage_cases = 0
    for op in ops.values():
        # Schemathesis' coverage phase: boundary values of every schema (lengths, limits, types, formats).
        for case in schema.iter_coverage_cases(op, generation_modes=both, generation_config=schema.config.generation_for(operation=op)):  # fmt: skip
            check(case, "owner")
            coverage_cases += 1

    real_ids = {"run_id": run_ids, "batch_id": [batch_id]}
    for op in ops.values():
        negatable = bool(len(op.path_parameters) or len(op.query) or len(op.body))
        for mode in both if negatable else [GenerationMode.POSITIVE]:
            strategies = [op.as_strategy(mode)]
            for param in op.path_parameters:
                strategies += [
                    op.as_strategy(mode, path_parameters={param.name: v}) for v in real_ids.get(param.name, [])
                ]
            fuzz(st.one_of(strategies), FUZZ_EXAMPLES, check, who=st.sampled_from(["owner"] * 8 + ["bad", "none"]))

    # 3. Probes -----------------------------------------------------------------------------------------
    owner_auth = bearer(owner_secret)
    wrong_type = api.raw(
        "POST", f"/api/v3/batches/{batch_id}/items", {**owner_auth, "Content-Type": "text/plain"}, data=b"{}"
    )
    assert wrong_type.status_code == 415, wrong_type.text
    too_big = api.raw(
        "POST", "/api/v3/batches", {**owner_auth, "Content-Type": "application/json"}, data=b" " * (1024 * 1024 + 1)
    )
    assert too_big.status_code == 413, too_big.text
    for probe_response in (wrong_type, too_big):
        assert_error_shape(probe_response, "probe")

    elapsed = time.monotonic() - started
    with capsys.disabled():
        print(f"\n{tally.line()}")
        print(
            f"fuzz: {len(ops)} operations; tenancy {tenancy_requests} requests ({len(intruders)} intruder keys); "
            f"coverage {coverage_cases} cases; {FUZZ_EXAMPLES} examples per operation and mode; {elapsed:.0f}s"
        )
    assert not any(status >= 500 for status in tally.statuses)
