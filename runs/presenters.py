"""Runs as the SDK's schemas want them (docs/api.md#run-documents): V2 status vocabulary, boolean flags, optional
fields omitted — never ``null`` (the SDK rejects ``"ttl": null``)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

from runs import packets
from runs.models import RunStatus, TaskRun
from runs.snapshot import Snapshot

API_STATUS: dict[str, str] = {  # keyed by TaskRun.status, a str column
    RunStatus.PENDING: "QUEUED",
    RunStatus.DELAYED: "DELAYED",
    RunStatus.EXECUTING: "EXECUTING",
    RunStatus.COMPLETED_SUCCESSFULLY: "COMPLETED",
    RunStatus.COMPLETED_WITH_ERRORS: "FAILED",
    RunStatus.CANCELED: "CANCELED",
    RunStatus.SYSTEM_FAILURE: "SYSTEM_FAILURE",
    RunStatus.CRASHED: "CRASHED",
    RunStatus.EXPIRED: "EXPIRED",
    RunStatus.TIMED_OUT: "TIMED_OUT",
}
# Every status the SDK accepts (docs/api.md#status-vocabulary), and API status → internal statuses for ``filter[status]``.
API_STATUSES = frozenset(
    {"PENDING_VERSION", "QUEUED", "DEQUEUED", "EXECUTING", "WAITING", "COMPLETED", "CANCELED", "FAILED",
     "CRASHED", "SYSTEM_FAILURE", "DELAYED", "EXPIRED", "TIMED_OUT"}
)  # fmt: skip
INTERNAL_STATUSES: dict[str, list[str]] = {}
for _internal, _api in API_STATUS.items():
    INTERNAL_STATUSES.setdefault(_api, []).append(str(_internal))

_COMPLETED = {"COMPLETED", "CANCELED", "FAILED", "CRASHED", "SYSTEM_FAILURE"}


def flags(api_status: str) -> dict[str, bool]:
    """trigger.dev's boolean helpers. EXPIRED and TIMED_OUT are not "completed" there either (docs/api.md#status-vocabulary)."""
    completed = api_status in _COMPLETED
    return {
        "isQueued": api_status in {"QUEUED", "DELAYED", "PENDING_VERSION"},
        "isExecuting": api_status in {"EXECUTING", "DEQUEUED"},
        "isWaiting": api_status == "WAITING",
        "isCompleted": completed,
        "isSuccess": api_status == "COMPLETED",
        "isFailed": completed and api_status != "COMPLETED",
        "isCancelled": api_status == "CANCELED",
    }


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _refuse_constant(literal: str) -> Any:
    raise ValueError(f"{literal} is not JSON")


def _finite(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):  # 1e999
        raise ValueError(f"{literal} is not a finite number")
    return value


def _strict_json(text: str) -> Any:
    """Standards JSON only: the answer must parse in the SDK's ``JSON.parse``, which refuses NaN and Infinity."""
    return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite)


def decode_payload(payload: str | None, payload_type: str) -> tuple[bool, Any]:
    """(present, value): super+json → its ``json`` member, JSON → parsed, text → as is.

    A stored payload that is not what its type says (not JSON, NaN or Infinity in it, nested too deep to
    parse, super+json that is not an object) is shown as its raw text: a read never fails on a payload.
    """
    if payload is None:
        return False, None
    try:
        if payload_type == "application/super+json":
            return True, _strict_json(payload).get("json")
        if payload_type == "application/json":
            return True, _strict_json(payload)
    except (ValueError, AttributeError, RecursionError):
        return True, payload
    if payload_type.startswith("text/"):
        return True, payload
    return False, None


def _compact(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if v is not None}


def _common(
    *,
    run_id: str,
    api_status: str,
    task: str,
    created_at: datetime,
    updated_at: datetime,
    tags: list[str],
    depth: int,
    batch_id: str | None,
    idempotency_key_user: str | None,
    delay_until: datetime | None,
    ttl: str | None,
    metadata: Any,
    finished_at: datetime | None,
) -> dict[str, Any]:
    return _compact(
        {
            "id": run_id,
            "status": api_status,
            "taskIdentifier": task,
            **flags(api_status),
            "isTest": False,
            "createdAt": iso(created_at),
            "updatedAt": iso(updated_at),
            "tags": list(tags),
            "costInCents": 0,
            "baseCostInCents": 0,
            "durationMs": 0,
            "depth": depth,
            "idempotencyKey": idempotency_key_user,
            "delayedUntil": iso(delay_until) if api_status == "DELAYED" else None,
            "ttl": ttl,
            "metadata": metadata if isinstance(metadata, dict) else None,
            "batchId": batch_id,
            "finishedAt": iso(finished_at),
            "attemptCount": 0,
        }
    )


def stored_packet(env_id: int, payload: str | None, payload_type: str) -> str | None:
    """The presigned download path of a payload that is a packet (``application/store``), else None. The view
    makes it absolute (``packets.absolute``): the SDK ``fetch``es ``payloadPresignedUrl`` as given."""
    if payload_type != packets.STORE_TYPE or packets.path_problem(payload) is not None:
        return None
    assert payload is not None
    return packets.object_url("get", env_id, payload)


def _detail(
    doc: dict[str, Any], *, batch_id: str | None, payload: tuple[bool, Any], error: Any, stored: str | None = None
) -> dict[str, Any]:
    doc["triggerFunction"] = "batchTrigger" if batch_id else "trigger"
    doc["relatedRuns"] = {}
    present, value = payload
    if present and value is not None:
        doc["payload"] = value
    if stored is not None:
        doc["payloadPresignedUrl"] = stored
    if isinstance(error, dict):
        doc["error"] = _compact(
            {"message": str(error.get("raw") or error.get("message") or ""), "name": error.get("name")}
        )
    return doc


def run_row(run: TaskRun, *, detail: bool = True) -> dict[str, Any]:
    """A Postgres row as ``RetrieveRunResponse`` (``detail``) or a list item (caller adds ``env``)."""
    doc = _common(
        run_id=run.id, api_status=API_STATUS[run.status], task=run.task_identifier, created_at=run.created_at,
        updated_at=run.updated_at, tags=run.tags, depth=run.depth, batch_id=run.batch_id,
        idempotency_key_user=run.idempotency_key_user if run.idempotency_key else None,
        delay_until=run.delay_until, ttl=run.ttl, metadata=run.metadata, finished_at=run.completed_at,
    )  # fmt: skip
    if not detail:
        return doc
    return _detail(
        doc, batch_id=run.batch_id, payload=decode_payload(run.payload, run.payload_type), error=run.error,
        stored=stored_packet(run.env_id, run.payload, run.payload_type),
    )  # fmt: skip


def buffered_status(s: Snapshot, *, cancelled: bool, dead: bool, now: datetime) -> str:
    """The API status of a buffered run; the one rule for retrieve and the list's ``filter[status]``."""
    if dead:
        return "SYSTEM_FAILURE"
    if cancelled:
        return "CANCELED"
    if s.delay_until is not None and s.delay_until > now:
        return "DELAYED"
    return "QUEUED"


def buffered_run(
    s: Snapshot,
    *,
    extra_tags: list[str],
    cancelled_at: datetime | None,
    cancel_reason: str | None,
    now: datetime,
    dead_reason: str | None = None,
) -> dict[str, Any]:
    """A run still in the buffer (docs/architecture.md#reads-and-mutations-of-buffered-runs): QUEUED, DELAYED while its delay is ahead, CANCELED once
    cancelled — and SYSTEM_FAILURE when dead-lettered (it will never become a row on its own; pollers
    must see it finished, not queued forever)."""
    status = buffered_status(s, cancelled=cancelled_at is not None, dead=dead_reason is not None, now=now)
    tags = list(dict.fromkeys([*s.tags, *extra_tags]))
    doc = _common(
        run_id=s.id, api_status=status, task=s.task_identifier, created_at=s.created_at,
        updated_at=cancelled_at or s.created_at, tags=tags, depth=s.depth, batch_id=s.batch_id,
        idempotency_key_user=s.idempotency_key_user, delay_until=s.delay_until, ttl=s.ttl, metadata=s.metadata,
        finished_at=cancelled_at,
    )  # fmt: skip
    if dead_reason is not None:
        error: dict[str, Any] | None = {"raw": dead_reason}
    elif cancelled_at is not None:
        error = {"raw": cancel_reason or "Run was cancelled"}
    else:
        error = None
    return _detail(
        doc, batch_id=s.batch_id, payload=decode_payload(s.payload, s.payload_type), error=error,
        stored=stored_packet(s.env_id, s.payload, s.payload_type),
    )  # fmt: skip
