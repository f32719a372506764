"""A Redis that restarts empty is noticed (docs/architecture.md#buffer-epoch): a private redis-server without
AOF holds 200 answered runs and is restarted; the drain fan-out's next tick logs an ERROR, records the loss in
Postgres, ``/metrics`` raises the gauge and counter, the buffer dashboard shows a banner until an operator
acknowledges it, and a retrieve of a lost run says it may have been lost. A fresh empty Redis with no history,
and a Redis that keeps its data, raise nothing."""

from __future__ import annotations

import json
import logging
import re

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client

from buffer.buffer import Buffer
from buffer.cluster import primaries
from buffer.models import BufferDataLoss, BufferEpoch
from drainer import epochs, tasks
from runs import auth
from runs.ids import minted_ms, new_run_id
from runs.tenants import ensure_tenant, issue_api_key
from sweep.admin import views
from tests.conftest import on_cluster
from tests.redis_servers import RedisServer
from tests.sweep.test_metrics import parse

pytestmark = pytest.mark.django_db
own_server = pytest.mark.single_redis("points REDIS_URL at a redis-server of its own")

RUNS = 200
TRIGGER = "/api/v1/tasks/hello/trigger"


@pytest.fixture
def private_redis(tmp_path, settings, mollifier_settings, monkeypatch):
    """A redis-server without AOF (nor RDB: ``--save ""``) as the buffer's Redis, 4 shards, the gate
    buffering every trigger; the fan-out's shard tasks are recorded instead of sent (nothing drains, so the
    runs stay buffered, as they would behind a backlog)."""
    server = RedisServer(tmp_path / "redis", "--appendonly", "no").start()
    settings.REDIS_URL = server.url
    settings.BUFFER_REDIS_URL = ""
    mollifier_settings(SHARDS=4, DRAINER_ENABLED=True, ENABLED=True, TRIP_THRESHOLD=0, KEY_PREFIX="epoch")
    monkeypatch.setattr(tasks.drain_shard, "apply_async", lambda *args, **kwargs: None)
    auth.clear_cache()
    epochs._seen.clear()
    yield server
    server.stop()


@pytest.fixture
def tenant(db):
    tenant = ensure_tenant("epoch-org", "dev", enrol=True)
    return tenant, issue_api_key(tenant.env)[1]


@pytest.fixture
def operator(client):
    user = User.objects.create_user("oncall", password="pw", is_staff=True)
    for app, codename in (("sweep", "repair_buffer"), ("sweep", "view_buffer"), ("buffer", "view_bufferdataloss")):
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app, codename=codename))
    client.force_login(user)
    return client


def trigger(client, secret) -> str:
    response = client.post(TRIGGER, data=json.dumps({"payload": "{}"}), content_type="application/json",
                           HTTP_AUTHORIZATION=f"Bearer {secret}")  # fmt: skip
    assert response.status_code == 200, response.content
    return response.json()["id"]


def metrics(client) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200
    return parse(response.content.decode())


def gauge(samples: dict, name: str) -> float:
    return samples[name][()]


def loss_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and "data loss" in r.getMessage()]


@pytest.mark.slow
@own_server
def test_a_redis_restarted_empty_is_logged_recorded_measured_and_shown_until_acknowledged(
    private_redis, tenant, client, operator, caplog
):
    _, secret = tenant
    buffer = Buffer.from_settings()
    with caplog.at_level(logging.INFO):
        tasks.fan_out()  # the first tick on an empty Redis: epochs recorded, no alarm
        answered = [trigger(client, secret) for _ in range(RUNS)]
        tasks.fan_out()
        assert sum(s.depth for s in buffer.shard_stats(now_ms=0)) == RUNS
        assert loss_lines(caplog) == []
        before = metrics(client)
        counted_before = before.get("mollifier_buffer_data_loss_events_total", {}).get((), 0.0)

        private_redis.kill()  # a crash; no AOF, no RDB (--save ""): it starts empty
        private_redis.start()
        tasks.fan_out()  # the next tick
        tasks.fan_out()  # and the one after: the loss is recorded once

    # 1. An ERROR names what happened and when.
    lines = loss_lines(caplog)
    assert len(lines) == 1, lines
    assert "lost the data of shards 0–3" in lines[0] and "detected" in lines[0], lines[0]
    # 2. Postgres remembers it, with the window in which the data went.
    (loss,) = BufferDataLoss.objects.all()
    assert loss.shards == [0, 1, 2, 3] and loss.acknowledged_at is None
    assert loss.lost_after <= loss.detected_at and "no epoch" in loss.found
    # 3. The metrics: a gauge of unacknowledged losses (what BufferDataLost reads) and a counter.
    samples = metrics(client)
    assert gauge(before, "mollifier_buffer_data_losses_unacknowledged") == 0
    assert gauge(samples, "mollifier_buffer_data_losses_unacknowledged") == 1
    assert samples["mollifier_buffer_data_loss_events_total"][()] == counted_before + 1
    assert gauge(samples, "mollifier_buffer_depth") == 0  # what the operator saw before: a quiet, empty buffer
    # 4. The dashboard's banner, for every staff member; the acknowledge button for those who may repair.
    page = operator.get("/admin/buffer/")
    assert page.status_code == 200
    html = page.content.decode()
    assert f'id="data-loss-{loss.pk}"' in html and "lost the data of 4 shards" in html and "Acknowledge" in html
    # Staff who may view the buffer pages but not repair see the banner but may not acknowledge it.
    viewer_user = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer_user.user_permissions.add(Permission.objects.get(content_type__app_label="sweep", codename="view_buffer"))
    viewer = Client()
    viewer.login(username="viewer", password="pw")
    seen = viewer.get("/admin/buffer/").content.decode()
    assert f'id="data-loss-{loss.pk}"' in seen and "Acknowledge" not in seen
    assert viewer.post(f"/admin/buffer/data-loss/{loss.pk}/acknowledge/").status_code == 403
    assert operator.get(f"/admin/buffer/data-loss/{loss.pk}/acknowledge/").status_code == 405
    history = operator.get("/admin/buffer/bufferdataloss/")
    assert history.status_code == 200 and "0, 1, 2, 3" in history.content.decode()
    # 5. A lost run's retrieve says what happened (still 404, and not worth retrying).
    response = client.get(f"/api/v3/runs/{answered[0]}", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == 404 and response["x-should-retry"] == "false"
    assert "the buffer lost runs" in response.json()["error"] and "Trigger it again" in response.json()["error"]
    # An unknown id minted long before the loss is a plain 404.
    old = client.get(f"/api/v3/runs/{new_run_id(now_ms=minted_ms(answered[0]) - 2 * 86_400_000)}",
                     HTTP_AUTHORIZATION=f"Bearer {secret}")  # fmt: skip
    assert old.status_code == 404 and old.json() == {"error": "Run not found"}

    # 6. Acknowledged: the banner and the gauge go; the record stays.
    done = operator.post(f"/admin/buffer/data-loss/{loss.pk}/acknowledge/")
    assert done.status_code == 302
    assert f'id="data-loss-{loss.pk}"' not in operator.get("/admin/buffer/").content.decode()
    assert gauge(metrics(client), "mollifier_buffer_data_losses_unacknowledged") == 0
    loss.refresh_from_db()
    assert loss.acknowledged_by == "oncall" and loss.acknowledged_at is not None
    again = operator.post(f"/admin/buffer/data-loss/{loss.pk}/acknowledge/", follow=True)
    assert "already acknowledged" in again.content.decode()


@pytest.mark.slow
@own_server
def test_a_fresh_empty_redis_with_no_history_and_one_that_keeps_its_data_raise_nothing(
    private_redis, tenant, client, caplog
):
    _, secret = tenant
    with caplog.at_level(logging.INFO):
        tasks.fan_out()  # a first start: no record, an empty Redis
        for _ in range(20):
            trigger(client, secret)
        for _ in range(3):
            tasks.fan_out()
    assert loss_lines(caplog) == []
    assert not BufferDataLoss.objects.exists()
    assert BufferEpoch.objects.filter(prefix="epoch").count() == 4
    assert gauge(metrics(client), "mollifier_buffer_data_losses_unacknowledged") == 0


@own_server
def test_a_plain_restart_that_keeps_the_data_raises_nothing(tmp_path, settings, mollifier_settings, monkeypatch):
    """With AOF the epoch survives the restart with the runs: same epoch, no loss."""
    server = RedisServer(tmp_path / "redis", "--appendonly", "yes", "--appendfsync", "always").start()
    try:
        settings.REDIS_URL = server.url
        settings.BUFFER_REDIS_URL = ""
        mollifier_settings(SHARDS=2, DRAINER_ENABLED=True, KEY_PREFIX="epoch-aof")
        monkeypatch.setattr(tasks.drain_shard, "apply_async", lambda *args, **kwargs: None)
        buffer = Buffer.from_settings()
        first = epochs.check(buffer, now_ms=1_000)
        assert first.started == [0, 1] and first.loss is None
        server.stop()
        server.start()
        epochs._seen.clear()  # a new worker process: no shortcut, Postgres is asked
        second = epochs.check(buffer, now_ms=2_000)
        assert second.compared and second.started == [] and second.loss is None
    finally:
        server.stop()


def test_two_checkers_that_race_on_an_emptied_redis_record_one_loss(key_prefix, mollifier_settings, redis_client):
    """Both see the new epoch; only the one whose conditional update matched the old record writes the loss."""
    mollifier_settings(SHARDS=2)
    buffer = Buffer.from_settings()
    assert epochs.check(buffer, now_ms=1_000).loss is None
    for shard in range(2):
        redis_client.delete(buffer.keys(shard).epoch)  # what a restart without AOF does to the shard
    # Checker A starts the new epochs and records the loss; checker B (another process: no shortcut) finds
    # them already recorded.
    a = epochs.check(buffer, now_ms=2_000)
    epochs._seen.clear()
    b = epochs.check(buffer, now_ms=2_001)
    assert a.loss is not None and a.loss.shards == [0, 1]
    assert b.compared and b.loss is None
    assert BufferDataLoss.objects.count() == 1


def test_an_epoch_replaced_by_another_is_a_loss_too(key_prefix, mollifier_settings, redis_client):
    """Another buffer's Redis (or a checker that died before writing Postgres) put a different epoch there."""
    mollifier_settings(SHARDS=1)
    buffer = Buffer.from_settings()
    epochs.check(buffer, now_ms=1_000)
    redis_client.set(buffer.keys(0).epoch, "feedface:5000")
    result = epochs.check(buffer, now_ms=6_000)
    assert result.loss is not None and result.loss.found == "epoch feedface:5000"
    assert BufferEpoch.objects.get(prefix=buffer.prefix, shard=0).epoch == "feedface:5000"


def test_an_idle_tick_asks_redis_once_and_postgres_only_once_a_minute(
    key_prefix, mollifier_settings, django_assert_num_queries
):
    mollifier_settings(SHARDS=4)
    buffer = Buffer.from_settings()
    epochs.check(buffer, now_ms=1_000)
    with django_assert_num_queries(0):
        for t in range(2_000, 60_000, 1_000):
            assert not epochs.check(buffer, now_ms=t).compared
    with django_assert_num_queries(1):  # the confirmation, once CONFIRM_EVERY_MS has passed
        epochs.check(buffer, now_ms=1_000 + epochs.CONFIRM_EVERY_MS)
    assert {r.confirmed_at.timestamp() for r in BufferEpoch.objects.filter(prefix=buffer.prefix)} == {61.0}


def test_minted_ms_reads_back_the_time_of_a_run_id():
    assert minted_ms(new_run_id(now_ms=1_765_000_000_123)) == 1_765_000_000_123
    assert minted_ms("run_short") is None and minted_ms("nope") is None and minted_ms("run_" + "I" * 25) is None


def test_a_master_that_lost_its_data_loses_only_the_shards_it_holds(key_prefix, mollifier_settings, redis_client):
    """Per shard, so it works on a Redis Cluster: the keys of one master's shards vanish (its data lost), the
    loss names exactly those shards. On a single server that master holds every shard (``make test-cluster``
    runs it on 3 masters)."""
    mollifier_settings(SHARDS=16)
    buffer = Buffer.from_settings()
    epochs.check(buffer, now_ms=1_000)
    node = primaries(redis_client)[0]
    on_node = [key.decode() for key in node.scan_iter(match=f"{buffer.prefix}:*", count=1000)]  # its slots only
    held = sorted(s for s in range(16) if buffer.keys(s).epoch in on_node)
    assert held, "the first master holds no shard"
    for key in on_node:
        node.delete(key)  # everything of this buffer on that master: what a restart without AOF leaves

    loss = epochs.check(buffer, now_ms=2_000).loss

    assert loss is not None and loss.shards == held
    assert (len(held) == 16) is not on_cluster()


def test_a_flapping_redis_shows_the_newest_losses_and_counts_the_rest(key_prefix, mollifier_settings, admin_client):
    mollifier_settings(SHARDS=1)
    buffer = Buffer.from_settings()
    epochs.check(buffer, now_ms=1_000)
    for restart in range(12):  # twelve restarts without AOF, each noticed by a tick
        buffer._client.delete(buffer.keys(0).epoch)
        assert epochs.check(buffer, now_ms=2_000 + restart * 1_000).loss is not None

    html = admin_client.get("/admin/buffer/").content.decode()

    assert len(re.findall(r'class="buffer-data-loss" id="data-loss-\d+"', html)) == views.LOSSES_N
    assert "…and 2 older unacknowledged\n  data losses" in html
    newest = BufferDataLoss.objects.order_by("-detected_at").first()
    assert f'id="data-loss-{newest.pk}"' in html


@pytest.mark.django_db(transaction=True)
def test_a_postgres_outage_skips_the_check_not_the_fan_out_and_the_next_tick_finds_the_loss(
    key_prefix, mollifier_settings, monkeypatch, caplog
):
    mollifier_settings(SHARDS=2, DRAINER_ENABLED=True)
    sent: list[int] = []
    monkeypatch.setattr(tasks.drain_shard, "apply_async", lambda args, expires: sent.append(args[0]))
    buffer = Buffer.from_settings()
    tasks.fan_out()
    org = next(o for o in range(1, 1000) if buffer.shard_for(o) == 1)
    buffer.accept(run_id=new_run_id(), env_id=org, org_id=org, snapshot="{}", now_ms=0, idempotency=None,
                  max_per_env=10)  # fmt: skip
    for shard in range(2):
        buffer._client.delete(buffer.keys(shard).epoch)  # Redis lost its data …
    saved = connection.settings_dict["PORT"]
    connection.close()
    connection.settings_dict["PORT"] = "1"  # … while Postgres refuses connections
    try:
        with caplog.at_level(logging.WARNING, logger="drainer.tasks"):
            assert tasks.fan_out() == [1]  # the shard with work is still sent
    finally:
        connection.close()
        connection.settings_dict["PORT"] = saved
    assert sent == [1]
    assert any("epoch check skipped: Postgres unreachable" in r.getMessage() for r in caplog.records)
    assert not BufferDataLoss.objects.exists()

    tasks.fan_out()  # Postgres is back: the epochs started during the outage differ from the record

    (loss,) = BufferDataLoss.objects.all()
    assert loss.shards == [0, 1] and loss.found.startswith("epoch ")
