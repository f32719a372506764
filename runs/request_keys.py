"""Request keys across a Redis outage (docs/api.md#request-idempotency).

A request key (``x-trigger-request-idempotency-key``) normally lives only in the buffer's Redis (``req:`` keys,
for ``REQUEST_KEY_TTL_S``). When the trigger path fails open because Redis is unreachable, the run's row is
written directly and its request key is recorded here, in the row's transaction: a retry during the outage
finds it (and gets the same run), and no run is ever answered without its key being somewhere.

When Redis answers again, a key Redis does not hold is not trusted to be new until every key recorded here
is back in Redis: the trigger script says UNFENCED while the shard's fence is gone (it expires after
``REQUEST_KEY_FENCE_MS`` without a keyed trigger, so after any outage that long), and ``restore`` puts the
recorded keys back and raises the fence. Whichever process sees the retry — one that saw the outage or not —
asks Redis first, and Redis sends it here.
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.db import connection

from buffer.buffer import Buffer
from buffer.values import RestoredKey
from mollifier_project.clock import from_ms, to_ms
from runs.models import RequestKey

log = logging.getLogger(__name__)


def record(env_id: int, task: str, key: str, *, run_id: str, now: datetime) -> str | None:
    """Record ``key`` → ``run_id`` (call inside the transaction that writes the run). Returns the run that
    already holds the key — the caller answers that run and writes nothing — or None once ``run_id`` holds it."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {RequestKey._meta.db_table} (env_id, task_identifier, key, run_id, created_at, restored) "
            "VALUES (%s, %s, %s, %s, %s, false) ON CONFLICT (env_id, task_identifier, key) DO NOTHING RETURNING run_id",
            [env_id, task, key, run_id, now],
        )
        if cursor.fetchone() is not None:
            return None
    holder = RequestKey.objects.filter(env_id=env_id, task_identifier=task, key=key).values_list("run_id", flat=True)
    return holder.first() or run_id


def point(env_id: int, task: str, key: str, *, run_id: str) -> None:
    """The request was answered with another run (an idempotency key's holder): the key points at that run."""
    RequestKey.objects.filter(env_id=env_id, task_identifier=task, key=key).update(run_id=run_id)


RESTORE_BATCH = 1000
"""Keys restored per call at most, so a trigger that finds the fence gone never carries a long outage's whole
backlog: the fence goes up once a call finds fewer than this left."""


def restore(
    buffer: Buffer, *, org_id: int, env_id: int, task: str, key: str, now_ms: int, ttl_ms: int, fence_ms: int,
    batch: int = RESTORE_BATCH,
) -> bool:  # fmt: skip
    """Put keys recorded during an outage and not yet restored back into Redis — up to ``batch`` of them, and
    always the caller's own (``env_id``, ``task``, ``key``) if it is recorded — then, if that was all of
    them, raise the fence of ``org_id``'s shard for ``fence_ms``. Rows older than ``ttl_ms`` are deleted
    first (their Redis keys would have expired). Returns whether the fence went up; either way the caller's
    key is now in Redis if Postgres had it. Usually three indexed queries that find nothing."""
    expired = RequestKey.objects.filter(created_at__lt=from_ms(now_ms - ttl_ms)).values_list("id", flat=True)
    RequestKey.objects.filter(id__in=list(expired[:batch])).delete()
    fields = ("id", "env_id", "env__org_id", "task_identifier", "key", "run_id", "created_at")
    rows = list(RequestKey.objects.filter(restored=False).order_by("id").values_list(*fields)[:batch])
    complete = len(rows) < batch
    # The caller's own key, even if restored before: a Redis that restarted empty lost what was restored.
    own = RequestKey.objects.filter(env_id=env_id, task_identifier=task, key=key).values_list(*fields)
    rows += [row for row in own if row not in rows]
    keys = [
        RestoredKey(org_id=org, env_id=env, task=task_id, key=k, run_id=run, ttl_ms=to_ms(created) + ttl_ms - now_ms)
        for _, env, org, task_id, k, run, created in rows
    ]
    buffer.restore_request_keys(keys, fence_org_id=org_id if complete else None, fence_ms=fence_ms)
    if rows:
        RequestKey.objects.filter(id__in=[row[0] for row in rows]).update(restored=True)
        log.warning("restored %d request keys recorded during a Redis outage", len(rows), extra={"org_id": org_id})
    return complete
