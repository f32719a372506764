"""Batches in the v4 two-phase protocol (docs/api.md#create-a-batch): create the batch row, then stream its items.

Items are de-duplicated by index through ``BatchItem`` (unique per batch and index), so the SDK resending
its whole stream never makes a second run; each new item goes through the normal trigger path (and so
through the gate) with the batch row already written. The batch seals once ``runCount`` indices have
arrived; it completes when every index has a row (``engine.settle_batches``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import IntegrityError, connection, transaction
from pydantic import ValidationError

from buffer.buffer import Buffer
from mollifier_project.clock import from_ms, to_ms
from mollifier_project.config import MollifierSettings
from runs import engine, ids, trigger
from runs.auth import EnvContext
from runs.ids import new_batch_id
from runs.locate import Where, locate_many
from runs.models import BatchItem, BatchStatus, BatchTaskRun, RunStatus, TaskRun
from runs.presenters import iso
from runs.schemas import BatchItem as BatchItemBody
from runs.schemas import CreateBatchBody, describe


class BatchNotFound(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Created:
    batch: BatchTaskRun
    is_cached: bool


@dataclass(frozen=True, slots=True)
class Ingested:
    batch_id: str
    accepted: int
    deduplicated: int
    sealed: bool


def create(env: EnvContext, body: CreateBatchBody, *, now: datetime) -> Created:
    """Create the batch row; a batch idempotency key already used in this env returns that batch."""
    if body.idempotencyKey:
        existing = BatchTaskRun.objects.filter(env_id=env.env_id, idempotency_key=body.idempotencyKey).first()
        if existing:
            return Created(existing, True)
    batch = BatchTaskRun(
        id=new_batch_id(to_ms(now)),
        env_id=env.env_id,
        run_count=body.runCount,
        idempotency_key=body.idempotencyKey,
        created_at=now,
    )
    try:
        with transaction.atomic():
            batch.save(force_insert=True)
    except IntegrityError:  # a concurrent create with the same key won
        return Created(BatchTaskRun.objects.get(env_id=env.env_id, idempotency_key=body.idempotencyKey), True)
    return Created(batch, False)


def parse_items(lines: Iterable[bytes], run_count: int) -> list[BatchItemBody]:
    """Parse and validate every NDJSON line before anything is written. Raises ``TriggerError``."""
    items: list[BatchItemBody] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except ValueError:
            raise trigger.InvalidTrigger(f"line {number}: Invalid JSON") from None
        try:
            item = BatchItemBody.model_validate(raw)
        except ValidationError as exc:
            raise trigger.Unprocessable(f"line {number}: {describe(exc)}") from None
        if item.index >= run_count:
            raise trigger.Unprocessable(f"line {number}: index {item.index} is out of range for runCount {run_count}")
        items.append(item)
    return items


def _item_key(item: BatchItemBody, batch: BatchTaskRun) -> str | None:
    """The item's own key, else one derived from the batch key and the index (docs/api.md#stream-batch-items)."""
    if item.options.idempotencyKey:
        return item.options.idempotencyKey
    if batch.idempotency_key:
        return hashlib.sha256(f"{batch.idempotency_key}-{item.index}".encode()).hexdigest()
    return None


def _reserve(batch: BatchTaskRun, pending: list[tuple[BatchItemBody, str]]) -> set[int]:
    """Insert the index → run id mapping; returns the indices this call reserved (new ones)."""
    if not pending:
        return set()
    with connection.cursor() as cur:
        cur.execute(
            f"INSERT INTO {BatchItem._meta.db_table} (batch_id, index, run_id, task_identifier) "
            "SELECT %s, i, r, t FROM unnest(%s::int[], %s::text[], %s::text[]) AS x(i, r, t) "
            "ON CONFLICT DO NOTHING RETURNING index",
            (batch.id, [i.index for i, _ in pending], [r for _, r in pending], [i.task for i, _ in pending]),
        )
        return {row[0] for row in cur.fetchall()}


def _orphaned(env: EnvContext, batch: BatchTaskRun, indices: list[int], buffer: Buffer) -> dict[int, str]:
    """Already-reserved indices whose run exists nowhere (the request that reserved them died before
    triggering): index → the reserved run id, to trigger again under that same id."""
    if not indices:
        return {}
    reserved = dict(BatchItem.objects.filter(batch_id=batch.id, index__in=indices).values_list("index", "run_id"))
    found = locate_many(env, list(reserved.values()), buffer=buffer, snapshot=False, row_fields=())
    return {
        index: run_id
        for index, run_id in reserved.items()
        if found[run_id].where is Where.NOWHERE and ids.timestamp_ms(run_id) is not None
    }


def ingest(
    env: EnvContext, batch_id: str, lines: Iterable[bytes], *, buffer: Buffer, cfg: MollifierSettings, now_ms: int
) -> Ingested:
    """Trigger every new index of the stream; count the rest as de-duplicated; seal when complete.

    Steps: 1. validate the whole stream; 2. prepare each new item's snapshot (validation errors abort
    before anything is written); 3. reserve the indices (``BatchItem``), and take over reserved indices
    whose run exists nowhere (``_orphaned``); 4. trigger each of them under its reserved run id — if one is
    refused (backpressure, outage) the error propagates and the reservations stay: the remainder are orphans
    that the SDK's resend triggers again under the same ids (two concurrent re-triggers of one id make one
    run), so no index ever gets a second run id; 5. count and seal.
    """
    batch = BatchTaskRun.objects.filter(id=batch_id, env_id=env.env_id).first()
    if batch is None:
        raise BatchNotFound(batch_id)
    items = parse_items(lines, batch.run_count)
    seen: dict[int, BatchItemBody] = {}
    for item in items:
        seen.setdefault(item.index, item)
    duplicates_in_stream = len(items) - len(seen)
    snapshots = []
    for item in seen.values():
        snapshot = trigger.prepare(
            env, item.task, item.options, item.payload, now_ms=now_ms, max_payload_bytes=cfg.MAX_PAYLOAD_BYTES,
            max_metadata_bytes=cfg.MAX_METADATA_BYTES,
            batch=trigger.BatchRef(batch.id, item.index), idempotency_key=_item_key(item, batch),
        )  # fmt: skip
        snapshots.append((item, snapshot))
    reserved = _reserve(batch, [(item, s.id) for item, s in snapshots])
    orphans = _orphaned(env, batch, [item.index for item, _ in snapshots if item.index not in reserved], buffer)
    todo = [
        (item, s if item.index in reserved else s.replace(id=orphans[item.index]))
        for item, s in snapshots
        if item.index in reserved or item.index in orphans
    ]
    done = 0
    try:
        for item, snapshot in todo:
            result = trigger.trigger(
                env, snapshot, buffer=buffer, cfg=cfg, now_ms=now_ms, bypass=trigger.is_bypass(item.options)
            )
            if result.run_id != snapshot.id:  # an idempotency hit: the index is that run
                BatchItem.objects.filter(batch_id=batch.id, index=item.index).update(run_id=result.run_id)
            done += 1
    finally:
        # A refused stream keeps its reservations: a concurrent resend may already have triggered them under
        # their reserved ids, and deleting them would let a later resend reserve them again under new ids
        # (a second run per index). An untriggered reservation is an orphan the next resend triggers again.
        sealed = _refresh(batch, now_ms=now_ms)
    return Ingested(batch.id, done, duplicates_in_stream + len(snapshots) - len(todo), sealed)


def _refresh(batch: BatchTaskRun, *, now_ms: int) -> bool:
    """Recount the received indices; seal and start processing once all ``run_count`` have arrived."""
    now = from_ms(now_ms)
    received = BatchItem.objects.filter(batch_id=batch.id).count()
    sealed = received >= batch.run_count
    BatchTaskRun.objects.filter(id=batch.id, sealed=False).update(
        items_received=received, sealed=sealed, updated_at=now
    )
    if sealed:  # only PENDING moves on: a resent stream must not reopen a finished or aborted batch
        BatchTaskRun.objects.filter(id=batch.id, status=BatchStatus.PENDING).update(
            status=BatchStatus.PROCESSING, updated_at=now
        )
    if sealed:
        engine.settle_batches([batch.id], now=now)
    return sealed


def retrieve(env: EnvContext, batch_id: str) -> dict[str, Any] | None:
    """``GET /api/v2/batches/{id}``: status, run ids by index, and the failed children as errors."""
    batch = BatchTaskRun.objects.filter(id=batch_id, env_id=env.env_id).first()
    if batch is None:
        return None
    run_ids = list(BatchItem.objects.filter(batch_id=batch.id).order_by("index").values_list("run_id", flat=True))
    failed = TaskRun.objects.filter(batch_id=batch.id, status=RunStatus.SYSTEM_FAILURE).order_by("batch_index")
    errors = [
        {"index": run.batch_index, "taskIdentifier": run.task_identifier, "error": (run.error or {}).get("raw", "")}
        for run in failed
    ]
    processing: dict[str, Any] = {"errors": errors}
    if batch.completed_at:
        processing["completedAt"] = iso(batch.completed_at)
    doc: dict[str, Any] = {
        "id": batch.id,
        "status": batch.status,
        "createdAt": iso(batch.created_at),
        "updatedAt": iso(batch.updated_at),
        "runCount": batch.run_count,
        "runs": run_ids,
        "processing": processing,
    }
    if batch.idempotency_key:
        doc["idempotencyKey"] = batch.idempotency_key
    return doc
