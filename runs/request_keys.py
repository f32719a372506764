"""Request keys across a Redis outage (docs/api.md#request-idempotency).

A request key (``x-trigger-request-idempotency-key``) normally lives only in the buffer's Redis (``req:`` keys,
24 h). When the trigger path fails open because Redis is unreachable, the run's row is written directly and
its request key is recorded here, in the row's transaction: a retry during the outage finds it (and gets the
same run), and no run is ever answered without its key being somewhere.

When Redis answers again, a key Redis does not hold is not trusted to be new until every key recorded here
is back in Redis: the trigger script says UNFENCED while the shard's fence is gone (it expires after
``REQUEST_KEY_FENCE_MS`` without a keyed trigger, so after any outage that long), and ``restore`` puts the
recorded keys back and raises the fence. Whichever process sees the retry — one that saw the outage or not —
asks Redis first, and Redis sends it here.
"""

from __future__ import annotations

from datetime import datetime

from django.db import connection

from buffer.buffer import Buffer, RestoredKey
from mollifier_project.clock import from_ms, to_ms
from runs.models import RequestKey


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


def restore(buffer: Buffer, *, org_id: int, now_ms: int, ttl_ms: int, fence_ms: int) -> int:
    """Put every key recorded during an outage and not yet restored back into Redis, then raise the fence of
    ``org_id``'s shard; delete the rows older than ``ttl_ms`` (their Redis keys would have expired). Returns
    how many keys went back. Usually one indexed query that finds nothing."""
    RequestKey.objects.filter(created_at__lt=from_ms(now_ms - ttl_ms)).delete()
    rows = list(
        RequestKey.objects.filter(restored=False).values_list(
            "id", "env_id", "env__org_id", "task_identifier", "key", "run_id", "created_at"
        )
    )
    keys = [
        RestoredKey(org_id=org, env_id=env, task=task, key=key, run_id=run, ttl_ms=to_ms(created) + ttl_ms - now_ms)
        for _, env, org, task, key, run, created in rows
    ]
    buffer.restore_request_keys(keys, fence_org_id=org_id, fence_ms=fence_ms)
    if rows:
        RequestKey.objects.filter(id__in=[row[0] for row in rows]).update(restored=True)
    return len(rows)
