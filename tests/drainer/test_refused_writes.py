"""A Postgres that answers but refuses writes (read-only after a failover, disk full, out of memory, too
many connections, I/O errors) is an outage, not bad data: the drain releases the round with attempts
unchanged and backs off, and the direct trigger path diverts or answers a JSON 503 — nothing is
dead-lettered or failed for it (docs/architecture.md#drain-outcomes)."""

from __future__ import annotations

import json
from contextlib import contextmanager

import psycopg
import pytest
from django.db import connection
from django.db import utils as db_utils

from drainer import drain
from drainer.limits import DrainLimits
from runs import auth
from runs.db_errors import Failure, classify
from runs.models import TaskRun
from runs.tenants import ensure_tenant, issue_api_key
from tests.factories import EnvironmentFactory, SnapshotFactory


@contextmanager
def read_only_postgres():
    """What a failover onto a demoted primary looks like: every session, also a reconnected one, is read-only
    (every write is 25006) until the database is switched back."""
    name = connection.ops.quote_name(connection.settings_dict["NAME"])
    with connection.cursor() as cur:
        cur.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
    connection.close()
    try:
        yield
    finally:
        connection.close()
        with connection.cursor() as cur:
            cur.execute("SET default_transaction_read_only = off")
            cur.execute(f"ALTER DATABASE {name} RESET default_transaction_read_only")
        connection.close()


@pytest.mark.parametrize(
    "error",
    [
        psycopg.errors.ReadOnlySqlTransaction,  # 25006
        psycopg.errors.DiskFull,  # 53100
        psycopg.errors.OutOfMemory,  # 53200
        psycopg.errors.TooManyConnections,  # 53300
        psycopg.errors.ConfigurationLimitExceeded,  # 53400
        psycopg.errors.SystemError,  # 58000
        psycopg.errors.IoError,  # 58030
        psycopg.errors.AdminShutdown,  # 57P01
        psycopg.errors.IdleInTransactionSessionTimeout,  # 25P03: a frozen drain's session, ended by Postgres
    ],
)
def test_refused_writes_are_an_outage_as_django_raises_them(error):
    wrapped = db_utils.InternalError(str(error.sqlstate))
    wrapped.__cause__ = error()

    assert classify(wrapped) is Failure.OUTAGE


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (psycopg.errors.UniqueViolation, Failure.FATAL),
        (psycopg.errors.InvalidTextRepresentation, Failure.FATAL),
        (psycopg.errors.DeadlockDetected, Failure.RETRY),
        (psycopg.errors.LockNotAvailable, Failure.RETRY),
    ],
)
def test_bad_data_stays_fatal_and_conflicts_stay_retryable(error, kind):
    wrapped = db_utils.DatabaseError("x")
    wrapped.__cause__ = error()

    assert classify(wrapped) is kind


@pytest.mark.django_db(transaction=True)
def test_a_read_only_postgres_releases_the_round_and_dead_letters_nothing(buffer, park, cfg):
    env = EnvironmentFactory()
    snaps = [SnapshotFactory(env=env) for _ in range(5)]
    park(*snaps)
    limits = DrainLimits.from_settings(cfg)

    with read_only_postgres():
        report = drain.drain_shard(buffer, shard=0, limits=limits, sleep=lambda s: None)

    assert report.outage and report.circuit_open
    assert (report.dead, report.failed, report.created, report.requeued) == (0, 0, 0, 0)
    entries = [buffer.get(s.id, org_id=env.org_id) for s in snaps]
    assert [(e.status, e.attempts) for e in entries] == [("QUEUED", 0)] * 5
    assert buffer.depth(0, env.id) == 5
    assert buffer.circuit_until_ms(0) > 0
    assert not TaskRun.objects.exists()

    report = drain.drain_shard(buffer, shard=0, limits=limits, sleep=lambda s: None)  # writable again
    assert report.created == 5
    assert buffer.circuit_until_ms(0) == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("enrolled", [True, False], ids=["enrolled-diverts", "not-enrolled-503"])
def test_a_read_only_postgres_on_the_direct_path_diverts_or_answers_a_json_503(
    client, key_prefix, mollifier_settings, enrolled
):
    mollifier_settings(ENABLED=True, TRIP_THRESHOLD=1_000_000)  # the gate passes through: the direct path
    tenant = ensure_tenant(f"ro-{enrolled}", "dev", enrol=enrolled)
    secret = issue_api_key(tenant.env)[1]
    auth.clear_cache()

    def post():
        return client.post(
            "/api/v1/tasks/hello/trigger", data=json.dumps({"payload": "{}"}), content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {secret}",
        )  # fmt: skip

    assert post().status_code == 200  # warm: the key is cached in process
    with read_only_postgres():
        response = post()

    if enrolled:
        assert response.status_code == 200, response.content
        from buffer.buffer import Buffer

        entry = Buffer.from_settings().get(response.json()["id"], org_id=tenant.org.id)
        assert entry is not None and entry.status == "QUEUED"
    else:
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/json"
        assert response.headers["x-should-retry"] == "true"
        assert "error" in response.json()
    assert TaskRun.objects.filter(env=tenant.env).count() == 1  # only the warm-up


@pytest.mark.django_db(transaction=True)
def test_an_outage_releases_the_round_leased_ahead_too_in_queue_order(buffer, park, mollifier_settings):
    """Rounds of two (the next one is leased while the first writes): an outage in the first round puts
    both back, behind each other, with attempts unchanged — every entry where it was, in FIFO order."""
    mollifier_settings(ROUND_BUDGET=2, DRAIN_LEASE_AHEAD=True)
    from django.conf import settings

    env = EnvironmentFactory()
    snaps = [SnapshotFactory(env=env) for _ in range(7)]
    park(*snaps)

    with read_only_postgres():
        report = drain.drain_shard(
            buffer, shard=0, limits=DrainLimits.from_settings(settings.MOLLIFIER), sleep=lambda s: None
        )

    assert report.outage and report.released >= 2
    head = buffer.queue_head(org_id=env.org_id, env_id=env.id, limit=10)
    assert [(e.run_id, e.status, e.attempts) for e in head] == [(s.id, "QUEUED", 0) for s in snaps]
    assert not TaskRun.objects.exists()
