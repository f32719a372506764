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

A keyed trigger whose script call failed after it may have been sent (its reply lost, so its run may be in the
buffer holding the key) is noted here by the web, then only (``note_ambiguous``): a retry that fails open answers
that attempt if the drain has written it, else supersedes it, and the drain acks a superseded attempt without a
row (``superseded``; docs/architecture.md#request-keys-across-an-outage). The normal trigger and drain never
write here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from django.db import connection, transaction

from buffer.buffer import Buffer
from buffer.values import RestoredKey
from mollifier_project.clock import from_ms, to_ms
from runs.models import AmbiguousAttempt, RequestKey, TaskRun

log = logging.getLogger(__name__)


_TABLE = RequestKey._meta.db_table
# A row older than the request key's life (REQUEST_KEY_TTL_S) before the new use is an older use of the key:
# the new use takes it over instead of being answered with it.
_TAKE_OVER_EXPIRED = (
    "ON CONFLICT (env_id, task_identifier, key) DO UPDATE SET run_id = EXCLUDED.run_id, "
    "created_at = EXCLUDED.created_at, restored = EXCLUDED.restored "
    "WHERE {t}.created_at < EXCLUDED.created_at - make_interval(secs => %s)"
)


def record(env_id: int, task: str, key: str, *, run_id: str, now: datetime, ttl_s: int) -> str | None:
    """Record ``key`` → ``run_id`` (call inside the transaction that writes the run). Returns the run that
    already holds the key — recorded by an earlier fail-open write, or a buffered attempt whose answer was lost
    and which the drain has written (``note_ambiguous``) — the caller answers that run and writes nothing; or
    None once ``run_id`` holds it (its key's unwritten ambiguous attempts are then superseded by it).
    A holder recorded more than ``ttl_s`` before ``now`` is an older use of the key and is taken over."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {_TABLE} (env_id, task_identifier, key, run_id, created_at, restored) "
            f"VALUES (%s, %s, %s, %s, %s, false) {_TAKE_OVER_EXPIRED.format(t=_TABLE)} RETURNING run_id",
            [env_id, task, key, run_id, now, ttl_s],
        )
        ours = cursor.fetchone() is not None
    if not ours:
        holder = RequestKey.objects.filter(env_id=env_id, task_identifier=task, key=key).values_list(
            "run_id", flat=True
        )
        return holder.first() or run_id
    drained = _take_ambiguous(env_id, task, key, run_id=run_id, now=now, ttl_s=ttl_s)
    if drained is not None:
        point(env_id, task, key, run_id=drained)
    return drained


def note_ambiguous(env_id: int, task: str, key: str, *, run_id: str, now: datetime, ttl_s: int) -> None:
    """Record that run ``run_id``'s trigger script may have run with request key ``key`` although its call
    failed (its reply lost): a fail-open retry of the key must find it (``record``). Prunes as many expired
    attempts as it adds, so the table grows only past a busy outage's attempts; expired ones cost the drain
    nothing (``superseded``). Written only when such a failure happens: the normal paths never write here."""
    with transaction.atomic():
        AmbiguousAttempt.objects.filter(
            id__in=AmbiguousAttempt.objects.filter(created_at__lt=now - timedelta(seconds=ttl_s)).values("id")[:1]
        ).delete()
        AmbiguousAttempt.objects.get_or_create(
            run_id=run_id, defaults={"env_id": env_id, "task_identifier": task, "key": key, "created_at": now}
        )


def _take_ambiguous(env_id: int, task: str, key: str, *, run_id: str, now: datetime, ttl_s: int) -> str | None:
    """Inside the fail-open write of ``run_id`` for ``key``: the key's ambiguous attempts of the last ``ttl_s``,
    locked. One the drain wrote is the run the key names: returned (the caller answers it). Else they are
    marked superseded by ``run_id`` (the drain then acks them without a row) and None is returned."""
    attempts = list(
        AmbiguousAttempt.objects.select_for_update()
        .filter(env_id=env_id, task_identifier=task, key=key, created_at__gte=now - timedelta(seconds=ttl_s))
        .exclude(run_id=run_id)
        .order_by("created_at")
        .values_list("run_id", flat=True)
    )
    if not attempts:
        return None
    written = TaskRun.objects.filter(id__in=attempts).values_list("id", flat=True).first()
    if written is not None:
        return written
    AmbiguousAttempt.objects.filter(run_id__in=attempts).update(superseded_by=run_id)
    log.warning("request key's ambiguous attempts %s superseded by run %s", attempts, run_id, extra={"env_id": env_id})
    return None


def superseded(run_ids: Sequence[str], *, ttl_s: int) -> dict[str, str]:
    """Of the drain's ``run_ids``, the ambiguous attempts a fail-open retry superseded: run id → the retry's
    run. Outside ``ttl_s`` of an outage one indexed read that finds nothing; an attempt superseded longer ago
    than that is no longer looked for (its key's life is over, as in Redis).

    ``FOR SHARE`` without the ``superseded_by`` condition: an attempt a retry's write has locked (``record``)
    is read once that write ends, so a retry that got there first is always seen. The other order — this
    read, then the retry's write, then this round's row commit — is the one race left
    (docs/architecture.md#request-keys-across-an-outage)."""
    if not run_ids:
        return {}
    table = AmbiguousAttempt._meta.db_table
    with connection.cursor() as cursor:  # autocommit: each statement its own transaction
        # No attempt noted within ``ttl_s`` (no outage lately): answered without shipping the ids, 0.1 ms rather
        # than 2–5 ms for 1,000 ids. An attempt noted after this read is superseded later still: the same race.
        cursor.execute(
            f"SELECT EXISTS (SELECT 1 FROM {table} WHERE created_at >= now() - make_interval(secs => %s))", [ttl_s]
        )
        row = cursor.fetchone()
        if not (row and row[0]):
            return {}
        cursor.execute(f"SELECT run_id, superseded_by FROM {table} WHERE run_id = ANY(%s) FOR SHARE", [list(run_ids)])
        return {run: holder for run, holder in cursor.fetchall() if holder is not None}


def recorded(env_id: int, task: str, key: str, *, now: datetime, ttl_s: int) -> str | None:
    """The run Postgres records for ``key`` within its life (``ttl_s`` before ``now``), or None."""
    holder = RequestKey.objects.filter(
        env_id=env_id, task_identifier=task, key=key, created_at__gte=now - timedelta(seconds=ttl_s)
    ).values_list("run_id", flat=True)
    return holder.first()


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
