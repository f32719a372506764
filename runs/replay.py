"""Replay: a new run made from an existing one, through the normal trigger path (docs/api.md#replay).

The original is read wherever it is — its row, or its buffered snapshot with the entry's overrides
(``runs.overrides``) — and turned back into trigger options; the body's fields override them. Then
``trigger.prepare`` and ``trigger.trigger`` do what they do for any trigger: validation, de-duplication,
the gate (a replay storm is buffered like any other), the write. Nothing of the trigger path is repeated
here. The idempotency key and delay of the original are not carried over: a replay is a new run now.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from buffer.buffer import Buffer
from mollifier_project.config import MollifierSettings
from runs import overrides, trigger
from runs.auth import EnvContext
from runs.locate import Where, locate
from runs.models import TaskRun
from runs.schemas import ReplayBody, TriggerOptions, describe
from runs.snapshot import Snapshot, SnapshotError, from_snapshot


class OriginalUnavailable(Exception):
    """The original exists but cannot be read right now (being materialised, or unreadable)."""


def _source(env: EnvContext, run_id: str, buffer: Buffer) -> Snapshot | TaskRun | None:
    found = locate(env, run_id, buffer=buffer)
    if found.where is Where.ROW:
        return found.row
    if found.where is Where.IN_FLIGHT:
        raise OriginalUnavailable(run_id)
    if found.where is Where.BUFFERED:
        assert found.entry is not None
        try:
            return overrides.effective(from_snapshot(found.entry.snapshot), found.entry)
        except SnapshotError:
            raise OriginalUnavailable(run_id) from None
    return None


def _options(src: Snapshot | TaskRun, body: ReplayBody) -> dict[str, Any]:
    """The original's trigger options (a row and a snapshot share these attribute names), then the body's."""
    doc: dict[str, Any] = {
        "queue": {"name": src.queue} if src.queue else None,
        "concurrencyKey": src.concurrency_key,
        "tags": list(src.tags or []),
        "metadata": src.metadata if isinstance(src.metadata, dict) else None,
        "maxAttempts": src.max_attempts,
        "maxDuration": src.max_duration,
        "machine": src.machine,
        "priority": src.priority or None,
        "ttl": src.ttl,
        "payloadType": src.payload_type,
    }
    given = body.model_dump(exclude_unset=True)
    for name in ("concurrencyKey", "tags", "metadata", "maxAttempts", "maxDuration", "machine", "priority", "ttl",
                 "delay", "idempotencyKey", "idempotencyKeyTTL"):  # fmt: skip
        if name in given:
            doc[name] = given[name]
    if "queue" in given:
        doc["queue"] = {"name": given["queue"]}
    return {k: v for k, v in doc.items() if v is not None}


def _payload(src: Snapshot | TaskRun, body: ReplayBody, options: dict[str, Any]) -> Any:
    if "payload" not in body.model_fields_set:
        return src.payload
    if body.payloadType == "application/super+json":
        options["payloadType"] = body.payloadType
        return body.payload
    options["payloadType"] = "application/json"
    return None if body.payload is None else json.dumps(body.payload, separators=(",", ":"), ensure_ascii=False)


def replay(
    env: EnvContext,
    run_id: str,
    body: ReplayBody,
    *,
    buffer: Buffer,
    cfg: MollifierSettings,
    now_ms: int,
    request_key: str | None,
) -> trigger.Triggered | None:
    """Trigger a copy of ``run_id`` (None when the caller's env has no such run). Raises what the trigger
    path raises (``trigger.TriggerError``) and ``OriginalUnavailable``."""
    src = _source(env, run_id, buffer)
    if src is None:
        return None
    return replay_from(env, src, body, buffer=buffer, cfg=cfg, now_ms=now_ms, request_key=request_key)


def replay_from(
    env: EnvContext,
    src: Snapshot | TaskRun,
    body: ReplayBody,
    *,
    buffer: Buffer,
    cfg: MollifierSettings,
    now_ms: int,
    request_key: str | None,
) -> trigger.Triggered:
    """Trigger a copy of an original already read (a row, or a snapshot with its overrides applied) — the
    one replay both ``POST …/replay`` and a bulk replay use."""
    raw = _options(src, body)
    payload = _payload(src, body, raw)
    try:
        options = TriggerOptions.model_validate(raw)
    except ValidationError as exc:
        raise trigger.InvalidTrigger(describe(exc)) from None
    snapshot = trigger.prepare(
        env,
        src.task_identifier,
        options,
        payload,
        now_ms=now_ms,
        max_payload_bytes=cfg.MAX_PAYLOAD_BYTES,
        max_metadata_bytes=cfg.MAX_METADATA_BYTES,
    )
    return trigger.trigger(
        env, snapshot, buffer=buffer, cfg=cfg, now_ms=now_ms, bypass=trigger.is_bypass(options), request_key=request_key
    )
