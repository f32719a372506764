"""The OpenAPI 3.1 document of what ``api/urls.py`` serves (docs/api.md#openapi-document), at ``GET /api/openapi.json``.

Request bodies are the pydantic models of ``runs.schemas`` and ``runs.bulk_schemas`` (``model_json_schema``),
widened where a ``before`` validator accepts more than the field's type says (``_WIDEN``) and narrowed where a
check the type cannot express refuses (``_NARROW``). Response bodies are the ``TypedDict``\\ s below: the documents
``runs.presenters``, ``runs.batches`` and ``runs.bulk`` build, where an optional field is absent, never ``null``,
and no other field appears (``additionalProperties: false``).

The document stands on its own: ``_OPERATIONS`` names each path, and nothing here reads the routes. The routes
and the document are held in step by a test (tests/fuzz/test_openapi.py) that walks Django's URL resolver:
every route under ``/api/`` has an entry, and every entry a route.

The document is built once per process (``document_bytes``).
"""

from __future__ import annotations

import functools
import json
from typing import (
    Annotated,
    Any,
    Literal,
    NotRequired,  # pydantic needs this TypedDict before Python 3.12
)

from pydantic import ConfigDict, TypeAdapter, WithJsonSchema, with_config
from typing_extensions import TypedDict

from runs import bulk_schemas, schemas
from runs.models import BatchStatus
from runs.presenters import API_STATUSES

VERSION = "0.1.0"  # pyproject.toml [project] version
REF = "#/components/schemas/{model}"
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")  # = api.views.batches.NDJSON_TYPES
_CLOSED = ConfigDict(extra="forbid")
Time = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]  # ISO 8601, UTC, milliseconds

# ------------------------------------------------------------------------------------- response bodies


@with_config(_CLOSED)
class Error(TypedDict):
    """Every API error. `requestId` only on a 500, which is a bug (docs/api.md#bad-input)."""

    error: str
    requestId: NotRequired[str]


@with_config(_CLOSED)
class Triggered(TypedDict):
    id: str
    isCached: bool


@with_config(_CLOSED)
class BatchCreated(TypedDict):
    id: str
    runCount: int
    isCached: bool
    idempotencyKey: NotRequired[str]


@with_config(_CLOSED)
class BatchItemsAccepted(TypedDict):
    id: str
    itemsAccepted: int
    itemsDeduplicated: int
    sealed: bool


@with_config(_CLOSED)
class BatchError(TypedDict):
    index: int | None
    taskIdentifier: str
    error: Any


@with_config(_CLOSED)
class BatchProcessing(TypedDict):
    completedAt: NotRequired[Time]
    errors: list[BatchError]


@with_config(_CLOSED)
class BatchDocument(TypedDict):
    id: str
    status: Annotated[str, WithJsonSchema({"type": "string", "enum": list(BatchStatus.values)})]
    createdAt: Time
    updatedAt: Time
    runCount: int
    runs: list[str]
    processing: BatchProcessing
    idempotencyKey: NotRequired[str]


ApiStatus = Annotated[str, WithJsonSchema({"type": "string", "enum": sorted(API_STATUSES)})]


@with_config(_CLOSED)
class RunError(TypedDict):
    message: str
    name: NotRequired[str]


class _RunFields(TypedDict):
    # What ``presenters._common`` writes, for the retrieve document and the list items alike.

    id: str
    status: ApiStatus
    taskIdentifier: str
    isQueued: bool
    isExecuting: bool
    isWaiting: bool
    isCompleted: bool
    isSuccess: bool
    isFailed: bool
    isCancelled: bool
    isTest: bool
    createdAt: Time
    updatedAt: Time
    tags: list[str]
    costInCents: float
    baseCostInCents: float
    durationMs: int
    depth: int
    attemptCount: int
    idempotencyKey: NotRequired[str]
    delayedUntil: NotRequired[Time]
    ttl: NotRequired[str]
    metadata: NotRequired[dict[str, Any]]
    batchId: NotRequired[str]
    finishedAt: NotRequired[Time]


@with_config(_CLOSED)
class RunDocument(_RunFields):
    """A run (docs/api.md#run-documents). Optional fields are absent, never null."""

    triggerFunction: Literal["trigger", "batchTrigger"]
    relatedRuns: dict[str, Any]
    payload: NotRequired[Any]
    payloadPresignedUrl: NotRequired[str]  # a stored payload (application/store): GET it, no key needed
    error: NotRequired[RunError]


@with_config(_CLOSED)
class RunEnv(TypedDict):
    id: str
    name: str


@with_config(_CLOSED)
class RunListItem(_RunFields):
    """A run in a list: the common fields and its environment."""

    env: RunEnv


@with_config(_CLOSED)
class Pagination(TypedDict):
    next: NotRequired[str]
    previous: NotRequired[str]


@with_config(_CLOSED)
class RunList(TypedDict):
    data: list[RunListItem]
    pagination: Pagination


@with_config(_CLOSED)
class Canceled(TypedDict):
    id: str


@with_config(_CLOSED)
class TagsSet(TypedDict):
    message: str


@with_config(_CLOSED)
class KeyReset(TypedDict):
    id: str


@with_config(_CLOSED)
class PacketUrl(TypedDict):
    """A presigned URL of ``/api/v1/packet-objects/…`` (docs/api.md#packets); ``storagePath`` on the upload handshake."""

    presignedUrl: str
    storagePath: NotRequired[str]


@with_config(_CLOSED)
class PacketStored(TypedDict):
    size: int


@with_config(_CLOSED)
class Replayed(TypedDict):
    id: str


@with_config(_CLOSED)
class MetadataDocument(TypedDict):
    metadata: dict[str, Any]


@with_config(_CLOSED)
class BulkCounts(TypedDict):
    total: int
    success: int
    failure: int


@with_config(_CLOSED)
class BulkActionDocument(TypedDict):
    """A bulk action (``runs.bulk.document``)."""

    id: str
    name: NotRequired[str]
    type: Literal["CANCEL", "REPLAY"]
    status: Literal["PENDING", "COMPLETED", "ABORTED"]
    counts: BulkCounts
    createdAt: Time
    completedAt: NotRequired[Time]


@with_config(_CLOSED)
class BulkActionList(TypedDict):
    data: list[BulkActionDocument]
    pagination: Pagination


@with_config(_CLOSED)
class BulkActionId(TypedDict):
    id: str


_REQUESTS: tuple[type, ...] = (
    schemas.TriggerBody,
    schemas.CreateBatchBody,
    schemas.BatchItem,
    schemas.TagsBody,
    schemas.ResetIdempotencyBody,
    schemas.RescheduleBody,
    schemas.ReplayBody,
    schemas.MetadataBody,
    bulk_schemas.CreateBulkActionBody,
)
_RESPONSES: tuple[type, ...] = (
    Error, Triggered, BatchCreated, BatchItemsAccepted, BatchDocument, RunDocument, RunList, Canceled, TagsSet,
    KeyReset, PacketUrl, PacketStored, Replayed, MetadataDocument, BulkActionDocument, BulkActionList,
    BulkActionId,
)  # fmt: skip

# What a ``mode="before"`` validator of runs.schemas also accepts: (schema, property) → the alternatives added.
_WIDEN: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("TriggerOptions", "queue"): [{"type": "string", "minLength": 1, "maxLength": 128}],
    ("TriggerOptions", "concurrencyKey"): [{"type": "number"}],
    ("TriggerOptions", "tags"): [{"type": "string", "maxLength": 128}],
    ("TagsBody", "tags"): [{"type": "string", "maxLength": 128}],
    ("ReplayBody", "tags"): [{"type": "string", "maxLength": 128}],
}
# What a check the type cannot express refuses: (schema, property) → keywords added to the property's schema.
_NARROW: dict[tuple[str, str], dict[str, Any]] = {
    ("CreateBatchBody", "runCount"): {"minimum": 1, "maximum": schemas.MAX_BATCH_SIZE},
    ("BatchItem", "index"): {"maximum": schemas.MAX_BATCH_SIZE - 1},
    ("TriggerOptions", "tags"): {"maxItems": 10},
    ("TagsBody", "tags"): {"maxItems": 10},
    ("ReplayBody", "tags"): {"maxItems": 10},
}


def _components() -> dict[str, Any]:
    models = TypeAdapter.json_schemas(
        [(model, "validation", TypeAdapter(model)) for model in _REQUESTS + _RESPONSES], ref_template=REF
    )[1]["$defs"]
    for (name, prop), alternatives in _WIDEN.items():
        field = models[name]["properties"][prop]
        if "anyOf" not in field:  # a single type: it becomes the first alternative
            field["anyOf"] = [{k: field.pop(k) for k in list(field) if k not in ("title", "default")}]
        field["anyOf"].extend(alternatives)
    for (name, prop), keywords in _NARROW.items():
        field = models[name]["properties"][prop]
        target = next((alt for alt in field.get("anyOf", []) if alt.get("type") in ("array", "integer")), field)
        target.update(keywords)
    return models


# --------------------------------------------------------------------------------------------- operations


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


_HEADERS = {
    "x-request-id": {
        "description": "The request's id: the caller's `x-request-id` when it is a plain token, else a new one.",
        "required": True,
        "schema": {"type": "string", "minLength": 1, "maxLength": 128},
    },
}
_RETRY = {"x-should-retry": {"description": "Whether the SDK should retry.", "schema": {"enum": ["true", "false"]}}}
_RATE = {"x-ratelimit-reset": {"description": "When to retry, epoch milliseconds.", "schema": {"type": "string"}}}
_ERRORS: dict[int, tuple[str, dict[str, Any]]] = {
    400: ("Bad request: empty or non-JSON body, a schema error naming the field, a bad duration, a NUL in a path segment or query parameter.", {}),
    401: ("Missing, unknown or revoked API key.", {}),
    404: ("No such run, batch or idempotency key in this environment (another environment's answers 404 too), or no route matches the path (a path parameter that is empty, holds a newline, or a `/` where none may be).", _RETRY),
    409: ("A trigger with the same idempotency key is still being created.", _RETRY),
    413: ("Body or payload too large.", {}),
    414: ("A request line over 4094 bytes (a long path or query). Gunicorn answers this itself, before the app, with an HTML page.", {}),
    415: ("The batch items were not sent as NDJSON.", {}),
    422: ("A value no row can hold (NUL, unpaired surrogate, NaN or Infinity), too many tags, or a bad batch item.", {}),
    429: ("The environment's buffer is full.", _RATE),
    503: ("Redis or Postgres unavailable, or the run is being created right now.", _RETRY),
}  # fmt: skip


def _op(
    op_id: str,
    summary: str,
    ok: tuple[int, str],
    errors: tuple[int, ...],
    *,
    body: str | None = None,
    body_required: bool = True,
    ndjson: bool = False,
    params: tuple[dict[str, Any], ...] = (),
) -> dict[str, Any]:
    status, model = ok
    responses: dict[str, Any] = {
        str(status): {
            "description": "Success.",
            "headers": _HEADERS,
            "content": {"application/json": {"schema": _ref(model)}},
        }
    }
    for code in (*errors, 414):
        text, headers = _ERRORS[code]
        responses[str(code)] = {
            "description": text,
            "headers": {**_HEADERS, **headers},
            "content": {"application/json": {"schema": _ref("Error")}},
        }
    responses["414"] = {"description": _ERRORS[414][0], "content": {"text/html": {"schema": {"type": "string"}}}}
    op: dict[str, Any] = {"operationId": op_id, "summary": summary, "responses": responses}
    if params:
        op["parameters"] = list(params)
    if body:
        content: dict[str, Any] = {"application/json": {"schema": _ref(body)}}
        if ndjson:
            schema = {"type": "array", "items": _ref(body), "description": "One JSON object per line."}
            content = {media: {"schema": schema} for media in NDJSON_TYPES}
        op["requestBody"] = {"required": body_required, "content": content}
    return op


def _packet_object(method: str) -> dict[str, Any]:
    """The presigned URL itself: no API key (the signed token in the path is the authority)."""
    ok: dict[str, Any] = (
        {"description": "Stored.", "headers": _HEADERS, "content": {"application/json": {"schema": _ref("PacketStored")}}}
        if method == "put"
        else {"description": "The packet as an inert attachment: its uploaded content type if the SDK decodes it "
                             "(JSON, superjson, text/plain), else application/octet-stream.", "headers": _HEADERS,
              "content": {"*/*": {"schema": {}}}}
    )  # fmt: skip
    errors = {
        "404": "The token is forged, expired or for another method, or (GET) nothing was uploaded under it, or "
        "the request is not on PACKET_ORIGIN.",
        "405": "Another method.",
        **(
            {
                "409": "Other bytes are already stored at the path: packets are written once.",
                "413": "The body passes MAX_PACKET_BYTES.",
            }
            if method == "put"
            else {}
        ),
    }
    responses = {"200": ok} | {
        code: {"description": text, "headers": _HEADERS, "content": {"application/json": {"schema": _ref("Error")}}}
        for code, text in errors.items()
    }
    responses["414"] = {"description": _ERRORS[414][0], "content": {"text/html": {"schema": {"type": "string"}}}}
    op: dict[str, Any] = {
        "operationId": f"{method}PacketObject",
        "summary": "Upload a packet" if method == "put" else "Download a packet",
        "security": [],
        "parameters": [_path("token", "The signed token of a presigned URL.", maxLength=1024)],
        "responses": responses,
    }
    # The PUT's body is the packet's raw bytes, in its own content type: not described (any body is taken).
    return op


def _path(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "minLength": 1, **schema},
    }


def _query(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema or {"type": "string"}}  # fmt: skip


_LIST_PARAMS = (
    _query("filter[status]", "Comma-separated API statuses; an unknown one is 400."),
    _query("filter[taskIdentifier]", "Comma-separated task ids."),
    _query("filter[tag]", "Comma-separated tags; any of them matches."),
    _query("filter[batch]", "A batch id."),
    _query("filter[queue]", "A queue name; `task/<name>` matches a task's default queue."),
    _query("filter[machine]", "A machine preset."),
    _query("filter[createdAt][from]", "Epoch milliseconds.", type="integer"),
    _query("filter[createdAt][to]", "Epoch milliseconds.", type="integer"),
    _query("filter[createdAt][period]", "A period such as `1d` or `12h`.", type="string", pattern=r"^\d+[smhdw]$"),
    _query("filter[isTest]", "`false` matches every run, `true` none (there are no test runs).", enum=["true", "false"]),
    *(_query(f"filter[{name}]", "No run has one: any value matches nothing.") for name in ("version", "bulkAction", "schedule", "region")),
    _query("page[size]", "Runs per page.", type="integer", minimum=1, maximum=100, default=25),
    _query("page[after]", "The cursor of `pagination.next`."),
    _query("page[before]", "The cursor of `pagination.previous`."),
)  # fmt: skip
_RUN_ID = _path("run_id", "A run id.", pattern="^[^/]+$")
_BATCH_ID = _path("batch_id", "A batch id.", pattern="^[^/]+$")
_COMMON = (400, 401, 503)
_ACTION_ID = _path("action_id", "A bulk action id.", pattern="^[^/]+$")
_PAGE_PARAMS = tuple(p for p in _LIST_PARAMS if p["name"].startswith("page["))
_FILENAME = _path("filename", "A packet path: `/`-separated segments of letters, digits and `_.=+@-`.", maxLength=512)

# OpenAPI path → method → operation, in the order of api/urls.py. tests/fuzz/test_openapi.py walks the URL
# resolver and fails on a route under /api/ that has no entry here, and on an entry that no route serves.
_OPERATIONS: dict[str, dict[str, dict[str, Any]]] = {
    "/api/v1/tasks/{task}/trigger": {"post": _op(
        "triggerTask", "Trigger a task", (200, "Triggered"), (*_COMMON, 404, 409, 413, 422, 429), body="TriggerBody",
        params=(_path("task", "The task id; may contain `/`.", maxLength=128),),
    )},
    "/api/v3/batches": {"post": _op(
        "createBatch", "Create a batch", (202, "BatchCreated"), (*_COMMON, 413, 422), body="CreateBatchBody",
    )},
    "/api/v3/batches/{batch_id}/items": {"post": _op(
        "streamBatchItems", "Stream batch items", (200, "BatchItemsAccepted"),
        (*_COMMON, 404, 409, 413, 415, 422, 429), body="BatchItem", ndjson=True, params=(_BATCH_ID,),
    )},
    "/api/v2/batches/{batch_id}": {"get": _op(
        "retrieveBatch", "Retrieve a batch", (200, "BatchDocument"), (*_COMMON, 404), params=(_BATCH_ID,),
    )},
    "/api/v3/runs/{run_id}": {"get": _op(
        "retrieveRun", "Retrieve a run", (200, "RunDocument"), (*_COMMON, 404), params=(_RUN_ID,),
    )},
    "/api/v1/runs": {"get": _op("listRuns", "List runs", (200, "RunList"), _COMMON, params=_LIST_PARAMS)},
    "/api/v2/runs/{run_id}/cancel": {"post": _op(
        "cancelRun", "Cancel a run (any body is ignored)", (200, "Canceled"), (*_COMMON, 404), params=(_RUN_ID,),
    )},
    "/api/v1/runs/{run_id}/tags": {"post": _op(
        "addTags", "Add tags to a run", (200, "TagsSet"), (*_COMMON, 404, 413, 422), body="TagsBody",
        params=(_RUN_ID,),
    )},
    "/api/v1/idempotencyKeys/{key}/reset": {"post": _op(
        "resetIdempotencyKey", "Reset an idempotency key", (200, "KeyReset"), (*_COMMON, 404, 413, 422),
        body="ResetIdempotencyBody", params=(_path("key", "The idempotency key; may contain `/`."),),
    )},
    "/api/openapi.json": {"get": {
        "operationId": "openapiDocument",
        "summary": "This document",
        "security": [],
        "responses": {"200": {
            "description": "The OpenAPI 3.1 document.",
            "headers": _HEADERS,
            "content": {"application/json": {"schema": {"type": "object"}}},
        }},
    }},
    "/api/v1/bulk-actions": {
        "post": _op(
            "createBulkAction", "Cancel or replay runs by filter or ids", (200, "BulkActionId"), (*_COMMON, 413, 422),
            body="CreateBulkActionBody",
        ),
        "get": _op("listBulkActions", "List bulk actions", (200, "BulkActionList"), _COMMON, params=_PAGE_PARAMS),
    },
    "/api/v1/bulk-actions/{action_id}": {"get": _op(
        "retrieveBulkAction", "Retrieve a bulk action", (200, "BulkActionDocument"), (*_COMMON, 404),
        params=(_ACTION_ID,),
    )},
    "/api/v1/bulk-actions/{action_id}/abort": {"post": _op(
        "abortBulkAction", "Abort a bulk action", (200, "BulkActionId"), (*_COMMON, 404), params=(_ACTION_ID,),
    )},
    "/api/v2/packets/{filename}": {"put": _op(
        "createUploadPayloadUrl", "Presign the upload of a packet", (200, "PacketUrl"), (*_COMMON, 404),
        params=(_FILENAME,),
    )},
    "/api/v1/packets/{filename}": {"get": _op(
        "getPayloadUrl", "Presign the download of a packet", (200, "PacketUrl"), (*_COMMON, 404), params=(_FILENAME,),
    )},
    "/api/v1/packet-objects/{token}": {"put": _packet_object("put"), "get": _packet_object("get")},
    "/api/v1/runs/{run_id}/packets/{field}": {"get": _op(
        "getRunPacketUrl", "Presign the download of a run's stored payload", (200, "PacketUrl"), (*_COMMON, 404),
        params=(_RUN_ID, _path("field", "`payload` (runs have no stored output here).", pattern="^[^/]+$")),
    )},
    "/api/v1/runs/{run_id}/reschedule": {"post": _op(
        "rescheduleRun", "Give a delayed run a new delay", (200, "RunDocument"), (*_COMMON, 404, 413, 422),
        body="RescheduleBody", params=(_RUN_ID,),
    )},
    "/api/v1/runs/{run_id}/replay": {"post": _op(
        "replayRun", "Trigger a new run from an existing one", (200, "Replayed"),
        (*_COMMON, 404, 409, 413, 422, 429), body="ReplayBody", body_required=False, params=(_RUN_ID,),
    )},
    "/api/v1/runs/{run_id}/metadata": {
        "put": _op(
            "updateRunMetadata", "Replace or change a run's metadata", (200, "MetadataDocument"),
            (*_COMMON, 404, 413, 422), body="MetadataBody", params=(_RUN_ID,),
        ),
        "get": _op("getRunMetadata", "A run's metadata", (200, "MetadataDocument"), (*_COMMON, 404), params=(_RUN_ID,)),
    },
}  # fmt: skip


def build() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Mollifier",
            "version": VERSION,
            "description": "The subset of the trigger.dev v4 HTTP API that Mollifier serves (docs/api.md).",
        },
        "paths": dict(_OPERATIONS),
        "components": {
            "schemas": _components(),
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "description": "`tr_<env>_…` secret key."}},
        },
        "security": [{"bearerAuth": []}],
    }  # fmt: skip


@functools.cache
def document_bytes() -> bytes:
    return json.dumps(build(), separators=(",", ":")).encode()


def document() -> dict[str, Any]:
    """A fresh copy of the cached document."""
    loaded: dict[str, Any] = json.loads(document_bytes())
    return loaded
