"""A keyed trigger whose reply was lost while its web lost Redis, then retried and written directly (fail open),
is one run, whichever of the two reaches Postgres first (docs/architecture.md#request-keys-across-an-outage).

Run A: the trigger script accepted it into the buffer and the reply never came back (a real TCP proxy in front of
Redis passes the command and drops the reply: the web sees a reset, notes the ambiguous attempt in Postgres). Run B: the client's retry with the same ``x-trigger-request-idempotency-key``, failed open once the fence
had lapsed, with its key recorded in Postgres. Both orders, through the real API, the real Redis and the real drain:

(a) B written before A is drained: B supersedes A's noted attempt, and the drain acks A without a row;
(b) A drained before B: B's fail-open write finds A's noted attempt written and answers A.

The normal keyed trigger and drain write nothing to that table (nor to the request keys' table).

Before the fix each order left two rows for one request key (the hosts test saw 0–2 such pairs per web cut).
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from urllib.parse import urlsplit

import pytest
from django.conf import settings as django_settings
from django.db import connection, transaction
from django.utils import timezone

from buffer.buffer import Buffer
from drainer.drain import materialise, run_round
from drainer.limits import DrainLimits
from mollifier_project.clock import now_ms
from runs import request_keys
from runs.models import AmbiguousAttempt, RequestKey, TaskRun
from runs.tenants import ensure_tenant, issue_api_key
from tests.buffer.invariants import assert_consistent
from tests.factories import EnvironmentFactory
from tests.live import free_port

TRIGGER = "/api/v1/tasks/hello/trigger"
FENCE_MS = 300


def post(client, secret, request_key: str, payload: str = "{}"):
    return client.post(
        TRIGGER, data=json.dumps({"payload": payload}), content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}", HTTP_X_TRIGGER_REQUEST_IDEMPOTENCY_KEY=request_key,
    )  # fmt: skip


def drain(tenant) -> int:
    """Drain the tenant's shard to empty; returns the duplicates the drain acked without a row."""
    buffer = Buffer.from_settings()
    limits = DrainLimits.from_settings(django_settings.MOLLIFIER)
    duplicates = 0
    for _ in range(100):
        report = run_round(buffer, shard=buffer.shard_for(tenant.org.id), limits=limits, now_ms=now_ms())
        duplicates += getattr(report, "duplicate", 0)  # getattr: the test also runs against the code before
        if report.leased == 0:
            return duplicates
    raise AssertionError("the drain did not finish")


def fail_open(client, secret, key: str, settings) -> str:
    """The retry, from a web that cannot reach Redis: 503 while the fence may stand, then a direct write."""
    up = settings.REDIS_URL
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    try:
        early = post(client, secret, key)
        assert early.status_code == 503 and early["x-should-retry"] == "true", early.content
        time.sleep(FENCE_MS / 1000 + 0.1)  # the fence has lapsed, whoever refreshed it last
        retry = post(client, secret, key)
        assert retry.status_code == 200, retry.content
        return retry.json()["id"]
    finally:
        settings.REDIS_URL = up


class LossyProxy:
    """A TCP proxy in front of the real Redis. ``lose_replies``: a call of the trigger script goes through, its
    reply is dropped and the connection closed — the web's call failed after its script ran in Redis."""

    def __init__(self, upstream: str):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self.lose_replies = False
        self.trigger_sha = Buffer.from_settings()._scripts.trigger.sha.encode()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = upstream.replace(parts.netloc, f"127.0.0.1:{self.listener.getsockname()[1]}")
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            up = socket.create_connection(self.upstream)
            script_sent = threading.Event()
            threading.Thread(target=self._pump, args=(conn, up, script_sent, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, conn, script_sent, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, script_sent: threading.Event, replies: bool) -> None:
        try:
            while data := src.recv(65536):
                if not replies and self.lose_replies and self.trigger_sha in data:
                    script_sent.set()
                if replies and script_sent.is_set():
                    break
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def lossy(settings):
    proxy = LossyProxy(settings.REDIS_URL)
    yield proxy
    proxy.close()


def lost_attempt(client, tenant, secret, key: str, settings, proxy: LossyProxy) -> str:
    """Run A: the script accepts it in Redis and the reply is lost; the web notes the attempt, answers 503."""
    # The shard's request-key fence is up (as under any keyed traffic): the first call accepts, not UNFENCED.
    Buffer.from_settings().restore_request_keys([], fence_org_id=tenant.org.id, fence_ms=FENCE_MS)
    up = settings.REDIS_URL
    settings.REDIS_URL = proxy.url
    try:
        # Warm (another tenant): Redis has the trigger script cached, so the lost EVALSHA runs it (not NOSCRIPT).
        warm = ensure_tenant(f"rk-warm-{uuid.uuid4().hex[:8]}", "prod", enrol=True)
        assert post(client, issue_api_key(warm.env)[1], str(uuid.uuid4())).status_code == 200
        proxy.lose_replies = True
        lost = post(client, secret, key)
        assert lost.status_code == 503, lost.content
    finally:
        settings.REDIS_URL = up
    (attempt,) = AmbiguousAttempt.objects.filter(key=key).values_list("run_id", flat=True)
    return attempt


@pytest.fixture
def tenant_secret(db, key_prefix, mollifier_settings):
    mollifier_settings(ENABLED=True, TRIP_THRESHOLD=0, REQUEST_KEY_FENCE_MS=FENCE_MS)
    tenant = ensure_tenant(f"rk-drain-{uuid.uuid4().hex[:8]}", "prod", enrol=True)
    return tenant, issue_api_key(tenant.env)[1]


def test_a_retry_written_directly_first_makes_the_drain_ack_the_lost_buffered_run_without_a_row(
    client, tenant_secret, settings, lossy
):
    tenant, secret = tenant_secret
    key = str(uuid.uuid4())
    lost = lost_attempt(client, tenant, secret, key, settings, lossy)  # run A: buffered; its client never saw it
    assert Buffer.from_settings().get(lost, org_id=tenant.org.id).status == "QUEUED"
    other = post(client, secret, str(uuid.uuid4())).json()["id"]  # a run of another request, same round
    answered = fail_open(client, secret, key, settings)  # run B, written directly with its key in Postgres
    assert answered != lost and TaskRun.objects.filter(id=answered, buffered=False).exists()

    duplicates = drain(tenant)

    # before the fix: {lost, answered, other}, two rows for one request key
    assert set(TaskRun.objects.filter(env=tenant.env).values_list("id", flat=True)) == {answered, other}
    assert duplicates == 1
    # Redis still names the duplicate for the key (its script wrote it): a later retry is answered with B.
    again = post(client, secret, key)
    assert again.status_code == 200 and again.json()["id"] == answered, again.content
    assert RequestKey.objects.get(env=tenant.env, key=key).run_id == answered
    buffer = Buffer.from_settings()
    entry = buffer.get(lost, org_id=tenant.org.id)
    assert entry is None or entry.status == "ACKED"  # acked: lingers for the grace TTL like any acked entry
    assert buffer.depth(buffer.shard_for(tenant.org.id), tenant.env.id) == 0
    assert_consistent(buffer)


def test_a_buffered_run_drained_first_is_the_answer_to_the_retry_that_fails_open(
    client, tenant_secret, settings, lossy
):
    tenant, secret = tenant_secret
    key = str(uuid.uuid4())
    lost = lost_attempt(client, tenant, secret, key, settings, lossy)  # run A: buffered; its client never saw it
    drain(tenant)
    assert TaskRun.objects.filter(id=lost, buffered=True).exists()

    answered = fail_open(client, secret, key, settings)

    assert answered == lost  # before the fix: a new run B, written directly
    assert list(TaskRun.objects.filter(env=tenant.env).values_list("id", flat=True)) == [lost]


def test_a_breaker_open_failure_and_an_unkeyed_trigger_note_nothing(
    client, tenant_secret, settings, mollifier_settings
):
    """An open breaker sends nothing, so nothing can be in the buffer; an unkeyed trigger has no key to hold."""
    _, secret = tenant_secret
    mollifier_settings(REDIS_BREAKER_OPEN_MS=60_000)
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    unkeyed = [client.post(TRIGGER, data="{}", content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {secret}")
               for _ in range(8)]  # fmt: skip
    assert {r.status_code for r in unkeyed} == {200}  # failed open; the breaker opened along the way
    assert AmbiguousAttempt.objects.count() == 0
    keyed = post(client, secret, str(uuid.uuid4()))  # the breaker is open: not sent
    assert keyed.status_code in (200, 503)  # 200 if the breaker has failed it for REQUEST_KEY_FENCE_MS already
    assert AmbiguousAttempt.objects.count() == 0


def test_the_normal_keyed_trigger_and_drain_write_nothing_to_postgres_beside_the_rows(client, tenant_secret):
    tenant, secret = tenant_secret
    answered = {post(client, secret, str(uuid.uuid4())).json()["id"] for _ in range(5)}
    assert drain(tenant) == 0
    assert set(TaskRun.objects.filter(env=tenant.env).values_list("id", flat=True)) == answered
    assert (AmbiguousAttempt.objects.count(), RequestKey.objects.count()) == (0, 0)


def test_materialise_acks_a_duplicate_that_was_cancelled_and_tagged_without_writing_or_mutating_a_row(
    client, tenant_secret, settings, lossy
):
    """What was done on the duplicate meanwhile is dropped: its id was never the answer to the request."""
    tenant, secret = tenant_secret
    key = str(uuid.uuid4())
    lost = lost_attempt(client, tenant, secret, key, settings, lossy)
    answered = fail_open(client, secret, key, settings)
    buffer = Buffer.from_settings()
    shard = buffer.shard_for(tenant.org.id)
    limits = DrainLimits.from_settings(django_settings.MOLLIFIER)
    leased = buffer.lease_round(shard, [(tenant.org.id, tenant.env.id, 10)], now_ms=now_ms(), lease_ms=30_000,
                                max_bytes=1 << 20)  # fmt: skip
    assert [e.run_id for e in leased.entries] == [lost]
    buffer.append_tags(lost, org_id=tenant.org.id, env_id=tenant.env.id, tags=["late"], max_tags=10)
    report = materialise(buffer, shard=shard, entries=leased.entries, limits=limits, now_ms=now_ms())
    assert (report.duplicate, report.created) == (1, 0)
    assert list(TaskRun.objects.filter(env=tenant.env).values_list("id", "tags")) == [(answered, [])]
    assert_consistent(buffer)


@pytest.mark.django_db(transaction=True)
def test_the_drains_read_waits_for_a_retrys_write_in_flight_and_sees_it_superseded():
    """The retry's transaction has locked the attempt (superseding it) and not committed yet: the drain's read
    waits for it and sees ``superseded_by`` — it does not write the attempt's row beside the retry's."""
    env = EnvironmentFactory()
    now = timezone.now()
    request_keys.note_ambiguous(env.id, "hello", "k", run_id="run_a", now=now, ttl_s=600)
    locked, release = threading.Event(), threading.Event()

    def retry() -> None:
        with transaction.atomic():
            assert request_keys.record(env.id, "hello", "k", run_id="run_b", now=now, ttl_s=600) is None
            locked.set()
            release.wait(10)
        connection.close()

    seen: dict[str, str] = {}

    def drain_read() -> None:
        seen.update(request_keys.superseded(["run_a", "run_other"], ttl_s=600))
        connection.close()

    writer = threading.Thread(target=retry)
    writer.start()
    assert locked.wait(10)
    reader = threading.Thread(target=drain_read)
    reader.start()
    reader.join(0.5)
    assert reader.is_alive()  # before FOR SHARE: it read at once, found nothing superseded, and A was written too
    release.set()
    writer.join(10)
    reader.join(10)
    assert seen == {"run_a": "run_b"}
