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

The drain records here the keys of the buffered runs it writes (``claim_drained``), before their rows: a retry
that fails open then finds a buffered attempt whose answer the outage lost, and an attempt drained after such a
retry was written is dropped as its duplicate (docs/architecture.md#request-keys-in-the-drain).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connection, transaction

from buffer.buffer import Buffer
from buffer.values import RestoredKey
from mollifier_project.clock import from_ms, to_ms
from runs.models import RequestKey

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
    already holds the key — recorded by an earlier fail-open write, or by the drain for a buffered run
    (``claim_drained``) — the caller answers that run and writes nothing; or None once ``run_id`` holds it.
    A holder recorded more than ``ttl_s`` before ``now`` is an older use of the key and is taken over."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {_TABLE} (env_id, task_identifier, key, run_id, created_at, restored) "
            f"VALUES (%s, %s, %s, %s, %s, false) {_TAKE_OVER_EXPIRED.format(t=_TABLE)} RETURNING run_id",
            [env_id, task, key, run_id, now, ttl_s],
        )
        if cursor.fetchone() is not None:
            return None
    holder = RequestKey.objects.filter(env_id=env_id, task_identifier=task, key=key).values_list("run_id", flat=True)
    return holder.first() or run_id


@dataclass(frozen=True, slots=True)
class Drained:
    """A buffered run about to be written by the drain, with its request key."""

    run_id: str
    env_id: int
    task: str
    key: str
    created_ms: int  # the run's trigger time (epoch ms: a list of ints crosses to Postgres at half the cost)


def claim_drained(runs: Sequence[Drained], *, ttl_s: int, now: datetime) -> dict[str, str]:
    """Record the request keys of buffered runs the drain is about to write, in one statement that commits
    before their rows are written (docs/architecture.md#request-keys-in-the-drain). Returns the duplicates:
    run id → the run holding its key that was made *after* it, within ``ttl_s``: a retry of the same request
    (the client retries only a call whose answer it lost, so this run's id never reached it) that failed open
    to a direct write while its web could not reach Redis (``record``). Those get no row.

    Both sides insert under the key's unique constraint, so whichever commits first holds the key and the
    other finds it: a fail-open retry (``record``) then answers the drained run, and the drain acks its entry
    as a duplicate of the retry's run — never both rows, and never a run dropped that a later attempt was
    answered with. A holder made *before* this run (its answer was the one lost: this run is the retry) keeps
    its row and this run takes the key; so does a re-drain of the same run. Of several entries of one round
    with one key, the latest claims it and none is a duplicate. The rows are marked restored (Redis holds these
    keys: the trigger script wrote them), and rows expired by ``now`` are pruned, as many as this call records."""
    latest: dict[tuple[int, str, str], Drained] = {}
    for run in sorted(runs, key=lambda r: r.created_ms):
        latest[(run.env_id, run.task, run.key)] = run
    # One order for every drainer: two claiming the same keys cannot deadlock.
    claims = sorted(latest.values(), key=lambda r: (r.env_id, r.task, r.key))
    if not claims:
        return {}
    duplicates: dict[str, str] = {}
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {_TABLE} (env_id, task_identifier, key, run_id, created_at, restored) "
            "SELECT env_id, task, key, run_id, to_timestamp(ms / 1000.0), true FROM unnest("
            "%s::bigint[], %s::text[], %s::text[], %s::text[], %s::bigint[]) AS k(env_id, task, key, run_id, ms) "
            "ON CONFLICT (env_id, task_identifier, key) DO UPDATE SET run_id = EXCLUDED.run_id, "
            "created_at = EXCLUDED.created_at, restored = true "
            f"WHERE {_TABLE}.run_id = EXCLUDED.run_id OR {_TABLE}.created_at <= EXCLUDED.created_at RETURNING run_id",
            [
                [r.env_id for r in claims], [r.task for r in claims], [r.key for r in claims],
                [r.run_id for r in claims], [r.created_ms for r in claims],
            ],
        )  # fmt: skip
        ours = {row[0] for row in cursor.fetchall()}
        lost = [r for r in claims if r.run_id not in ours]
        if lost:  # held by a run made after this one: a duplicate, unless that is a use of the key beyond its life
            cursor.execute(
                f"SELECT k.run_id, t.run_id FROM {_TABLE} t JOIN unnest(%s::bigint[], %s::text[], %s::text[], "
                "%s::text[], %s::bigint[]) AS k(env_id, task, key, run_id, ms) "
                "ON t.env_id = k.env_id AND t.task_identifier = k.task AND t.key = k.key "
                "WHERE t.created_at < to_timestamp(k.ms / 1000.0) + make_interval(secs => %s)",
                [
                    [r.env_id for r in lost], [r.task for r in lost], [r.key for r in lost],
                    [r.run_id for r in lost], [r.created_ms for r in lost], ttl_s,
                ],
            )  # fmt: skip
            duplicates.update(dict(cursor.fetchall()))
        cursor.execute(
            f"DELETE FROM {_TABLE} WHERE id IN (SELECT id FROM {_TABLE} WHERE created_at < %s "
            "ORDER BY created_at LIMIT %s)",
            [now - timedelta(seconds=ttl_s), len(claims)],
        )
    return duplicates


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
