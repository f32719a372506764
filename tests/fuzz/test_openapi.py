"""The OpenAPI document (docs/api.md#openapi-document): valid OpenAPI 3.1, served without a key, and in step with
the routes Django serves under ``/api/``: every route is in it, with exactly the methods the route accepts."""

from __future__ import annotations

import re

import pytest
import schemathesis
from django import urls
from django.urls import URLResolver, get_resolver
from django.urls.resolvers import RegexPattern
from openapi_spec_validator import validate
from schemathesis.core.result import Ok

from api import openapi

pytestmark = pytest.mark.django_db

METHODS = ("get", "post", "put", "patch", "delete")


def routes(resolver: URLResolver | None = None) -> dict[str, str]:
    """OpenAPI path → URL name of every route under ``/api/`` that the URL resolver (the project's, by default)
    serves, includes followed: computed here from the routes, independently of api.openapi."""
    found: dict[str, str] = {}

    def walk(patterns: list, prefix: str) -> None:
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, route)
            elif route.startswith("api/"):
                found["/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)] = pattern.name or ""

    walk((resolver or get_resolver()).url_patterns, "")
    return found


def test_the_document_is_valid_openapi_3_1():
    doc = openapi.document()
    assert doc["openapi"].startswith("3.1")
    validate(doc)  # openapi-spec-validator: the 3.1 meta-schema, and every $ref resolves


def test_schemathesis_loads_every_operation():
    schema = schemathesis.openapi.from_dict(openapi.document())
    results = list(schema.get_all_operations())
    assert all(isinstance(r, Ok) for r in results), [r for r in results if not isinstance(r, Ok)]
    labels = {r.ok().label for r in results}
    documented = {f"{m.upper()} {path}" for path, item in openapi.document()["paths"].items() for m in item}
    assert labels == documented


def test_every_route_under_api_is_documented_and_every_documented_path_is_routed():
    doc = openapi.document()
    assert set(doc["paths"]) == set(routes()), set(doc["paths"]) ^ set(routes())


def test_a_route_the_document_lacks_is_found():
    """The walk above sees a route added anywhere under ``/api/``, here in a urlconf of its own."""
    urlconf = [
        urls.path("", urls.include("api.urls")),
        urls.path("api/v1/undocumented", lambda request: None, name="undocumented"),
    ]

    served = routes(URLResolver(RegexPattern(r"^/"), urlconf))

    assert set(served) - set(openapi.document()["paths"]) == {"/api/v1/undocumented"}
    assert len(served) == len(openapi.document()["paths"]) + 1


def test_every_path_parameter_is_declared():
    for path, item in openapi.document()["paths"].items():
        names = set(re.findall(r"{(\w+)}", path))
        for method, op in item.items():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == names, (method, path)


def test_each_route_accepts_exactly_its_documented_methods(client):
    """Without a key, a documented method gets 401 (200 for the document itself, 404 for a packet URL whose token
    is not valid); any other gets 405."""
    for path, item in openapi.document()["paths"].items():
        url = re.sub(r"{\w+}", "x", path)
        for method in METHODS:
            response = getattr(client, method)(url)
            if method in item and item[method].get("security") == []:
                expected = 404 if "{token}" in path else 200  # a presigned packet URL: "x" is no valid token
            elif method in item:
                expected = 401
            else:
                expected = 405
            assert response.status_code == expected, (method, path, response.content)
            assert "error" in response.json() or expected == 200


def test_the_list_query_parameters_are_documented():
    params = {p["name"] for p in openapi.document()["paths"]["/api/v1/runs"]["get"]["parameters"]}
    assert {"filter[status]", "filter[tag]", "filter[createdAt][from]", "page[size]", "page[after]"} <= params


def test_every_operation_documents_the_bearer_scheme_and_its_errors():
    doc = openapi.document()
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": "`tr_<env>_…` secret key."
    }  # fmt: skip
    assert doc["security"] == [{"bearerAuth": []}]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if op.get("security") == []:
                continue
            codes = set(op["responses"])
            assert {"400", "401", "503"} <= codes, (method, path)
            for code, response in op["responses"].items():
                if code == "414":  # gunicorn's own page for a request line over its limit
                    assert set(response["content"]) == {"text/html"}
                elif code.startswith(("4", "5")):
                    assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    statuses = {code for item in doc["paths"].values() for op in item.values() for code in op["responses"]}
    assert statuses >= {"200", "202", "400", "401", "404", "409", "413", "415", "422", "429", "503"}


def test_batch_items_take_ndjson():
    body = openapi.document()["paths"]["/api/v3/batches/{batch_id}/items"]["post"]["requestBody"]
    assert set(body["content"]) == {"application/x-ndjson", "application/ndjson", "application/jsonl"}


def test_served_without_a_key_as_json_and_cached(client):
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json() == openapi.document()
    assert openapi.document_bytes() is openapi.document_bytes()
    assert client.post("/api/openapi.json").status_code == 405


def test_the_ndjson_types_are_those_the_view_accepts():
    from api.views import batches

    assert openapi.NDJSON_TYPES == batches.NDJSON_TYPES
