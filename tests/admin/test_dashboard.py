"""The buffer dashboard at /admin/buffer/ and its drill-downs (``sweep.admin.views``), through the test client
against real Redis and Postgres; and the ``Buffer`` reads behind them (``buffer.operators``)."""

from __future__ import annotations

import time

import pytest
from django.urls import reverse

from buffer.buffer import Buffer
from sweep.models import StuckEntry, StuckKind
from tests.admin.conftest import NOW
from tests.buffer.invariants import assert_consistent
from tests.factories import EnvironmentFactory, OrganizationFactory

pytestmark = pytest.mark.django_db

DASHBOARD = "/admin/buffer/"


def shard_url(shard: int) -> str:
    return reverse("buffer_admin:shard", args=[shard])


def env_url(env) -> str:
    return reverse("buffer_admin:env", args=[env.org_id, env.id])


# ------------------------------------------------------------------------------------------ access


@pytest.mark.parametrize("url", [DASHBOARD, "/admin/buffer/shard/0/", "/admin/buffer/org/1/env/2/"])
def test_anonymous_visitors_are_sent_to_the_login(client, buffer, url):
    response = client.get(url)

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_non_staff_users_are_sent_to_the_login(client, buffer, django_user_model):
    client.force_login(django_user_model.objects.create_user("plain", password="pw"))

    assert client.get(DASHBOARD).status_code == 302


def test_the_dashboard_url_is_slash_admin_slash_buffer():
    assert reverse("buffer_admin:dashboard") == DASHBOARD


# --------------------------------------------------------------------------------------- dashboard


def test_the_dashboard_shows_flags_verdict_and_shards_with_work(admin_client, buffer, accept, mollifier_settings):
    mollifier_settings(SHADOW_MODE=True)
    env = EnvironmentFactory()
    accept(env, 3)
    shard = buffer.shard_for(env.org_id)

    response = admin_client.get(DASHBOARD)

    assert response.status_code == 200
    html = response.content.decode()
    for flag in ("ENABLED", "DRAINER_ENABLED", "STALE_SWEEP_ENABLED", "SHADOW_MODE"):
        assert f"{flag}: <strong>on</strong>" in html
    verdict = response.context["verdict"]
    assert verdict.reason in html
    assert [row.shard for row in response.context["rows"]] == [shard]  # idle shards folded away
    assert response.context["rows"][0].depth == 3
    assert response.context["idle"] == 3
    assert shard_url(shard) in html


def test_the_dashboard_shows_every_shard_on_request(admin_client, buffer):
    response = admin_client.get(DASHBOARD, {"all": "1"})

    assert [row.shard for row in response.context["rows"]] == [0, 1, 2, 3]
    assert response.context["verdict"].reason == "flowing: the buffer is empty"


def test_old_entries_with_nothing_drained_read_stuck(admin_client, buffer, accept):
    env = EnvironmentFactory()
    accept(env, 2, now_ms=int(time.time() * 1000) - 11 * 60_000)

    verdict = admin_client.get(DASHBOARD).context["verdict"]

    shard = buffer.shard_for(env.org_id)
    assert verdict.reason.startswith(
        f"stuck: no drain progress on shard {shard} for 11 min (bound 22 s); shard {shard}"
    )
    assert verdict.reason.endswith("has 2 entries, oldest 11 min")
    assert "the drain fan-out has never ticked on this Redis: is celery beat running?" in verdict.notes


def test_a_recent_fan_out_tick_and_drain_progress_show_and_clear_the_beat_note(admin_client, buffer, accept):
    now = int(time.time() * 1000)
    env = EnvironmentFactory()
    accept(env, 2, now_ms=now - 11 * 60_000)
    shard = buffer.shard_for(env.org_id)
    buffer.count_drained(shard, 1, now_ms=now - 1_000)  # progress a second ago: draining, not stuck
    buffer.mark_fan_out_tick(now_ms=now - 1_000)

    response = admin_client.get(DASHBOARD)

    assert not response.context["verdict"].reason.startswith("stuck")
    assert not any("fan-out" in note for note in response.context["verdict"].notes)
    assert 'id="fan-out-tick">fan-out last tick: <strong>1 s ago' in response.content.decode()


def test_an_open_circuit_reads_postgres_outage(admin_client, buffer):
    buffer.open_circuit(2, now_ms=int(time.time() * 1000), base_ms=60_000, max_ms=60_000)

    response = admin_client.get(DASHBOARD)

    assert response.context["verdict"].reason.startswith("Postgres outage: circuit open on 1 shard (2)")
    (row,) = response.context["rows"]
    assert row.circuit_text.startswith("open")


def test_the_drainer_switched_off_reads_paused(admin_client, buffer, mollifier_settings):
    mollifier_settings(DRAINER_ENABLED=False)

    html = admin_client.get(DASHBOARD).content.decode()

    assert "paused: the drainer is switched off" in html
    assert "DRAINER_ENABLED: <strong>off</strong>" in html


def test_the_dashboard_says_when_redis_is_unreachable(admin_client, buffer, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"

    response = admin_client.get(DASHBOARD)

    assert response.status_code == 503
    assert "Redis is unreachable" in response.content.decode()


# ---------------------------------------------------------------------------------------- shard page


def test_the_shard_page_lists_its_deepest_orgs_and_envs(admin_client, buffer, accept):
    org = OrganizationFactory(slug="deep")
    big, small = EnvironmentFactory(org=org, slug="big"), EnvironmentFactory(org=org, slug="small")
    accept(big, 5)
    accept(small, 2)
    shard = buffer.shard_for(org.id)

    response = admin_client.get(shard_url(shard))

    assert response.status_code == 200
    assert [(o["org_id"], o["depth"], o["envs"]) for o in response.context["org_rows"]] == [(org.id, 7, 2)]
    assert [(e["env_id"], e["depth"]) for e in response.context["env_rows"]] == [(big.id, 5), (small.id, 2)]
    html = response.content.decode()
    assert "deep/big" in html and env_url(big) in html


def test_an_unknown_shard_is_404(admin_client, buffer):
    assert admin_client.get(shard_url(4)).status_code == 404


def test_top_envs_orders_by_depth_then_id_and_is_bounded(buffer):
    shard = 0
    orgs = [o for o in range(1, 400) if buffer.shard_for(o) == shard][:60]
    for i, org in enumerate(orgs):
        for j in range(i % 3 + 1):  # depth 1, 2 or 3
            buffer.accept(run_id=f"run_t{org}_{j}", env_id=org * 10, org_id=org, snapshot="{}", now_ms=NOW + j,
                          idempotency=None, max_per_env=100)  # fmt: skip

    top = buffer.top_envs(shard, limit=50)

    assert (top.orgs_total, top.envs_total, top.queued) == (60, 60, sum(i % 3 + 1 for i in range(60)))
    assert len(top.orgs) == len(top.envs) == 50
    depths = [(e.depth, -e.env_id) for e in top.envs]
    assert depths == sorted(depths, reverse=True)
    assert top.envs[0].depth == 3 and top.envs[0].head_accepted_ms == NOW
    assert top.orgs[0].org_id == min(o for i, o in enumerate(orgs) if i % 3 == 2)


# ------------------------------------------------------------------------------------------ env page


def test_the_env_page_lists_its_stuck_entries_and_the_head_of_its_queue(admin_client, buffer, accept):
    env = EnvironmentFactory()
    ids = accept(env, 3)
    shard = buffer.shard_for(env.org_id)
    buffer.lease(shard, org_id=env.org_id, env_id=env.id, n=1, now_ms=NOW, lease_ms=1000)
    buffer.dead_letter(shard, ids[0], now_ms=NOW, reason="boom")
    from mollifier_project.clock import from_ms

    StuckEntry.objects.create(
        run_id=ids[0], org_id=env.org_id, env_id=env.id, shard=shard, kind=StuckKind.DEAD, accepted_at=from_ms(NOW),
        first_seen_at=from_ms(NOW), last_seen_at=from_ms(NOW), attempts=0, last_error="boom",
    )  # fmt: skip

    response = admin_client.get(env_url(env))

    assert response.status_code == 200
    assert [s.run_id for s in response.context["stuck"]] == [ids[0]]
    assert [h["entry"].run_id for h in response.context["head"]] == ids[1:]
    census = response.context["census"]
    assert (census.queued, census.retrying, census.leased, census.dead, census.complete) == (2, 0, 0, 1, True)
    html = response.content.decode()
    assert reverse("admin:runs_taskrun_buffered", args=[ids[1]]) in html
    assert reverse("admin:sweep_stuckentry_change", args=[response.context["stuck"][0].pk]) in html


def test_the_env_page_of_a_deleted_env_still_renders(admin_client, buffer):
    response = admin_client.get(reverse("buffer_admin:env", args=[123456, 654321]))

    assert response.status_code == 200
    assert "no row" in response.content.decode()


# ---------------------------------------------------------------------------------- bounded Redis calls


@pytest.fixture
def crowded(key_prefix, mollifier_settings) -> tuple[Buffer, int]:
    """One shard holding 10,000 orgs with 5 envs each (50,000 envs), one entry per env; no Postgres rows."""
    mollifier_settings(SHARDS=1, DRAINER_ENABLED=True, STALE_SWEEP_ENABLED=True)
    buffer = Buffer.from_settings()
    return buffer, 0


def populate(buffer: Buffer, orgs: int, envs_per_org: int) -> None:
    for org in range(1, orgs + 1):
        for e in range(envs_per_org):
            env = org * 10 + e
            buffer.accept(run_id=f"run_c{env}", env_id=env, org_id=org, snapshot="{}", now_ms=NOW, idempotency=None,
                          max_per_env=100)  # fmt: skip


def traffic(admin_client, redis_counter, url: str) -> tuple[int, int]:
    redis_counter.reset()
    response = admin_client.get(url)
    assert response.status_code == 200
    return redis_counter.commands, redis_counter.round_trips


@pytest.mark.slow
def test_pages_make_a_bounded_number_of_redis_calls_at_ten_thousand_orgs(admin_client, crowded, redis_counter):
    buffer, shard = crowded
    pages = [DASHBOARD, shard_url(shard), reverse("buffer_admin:env", args=[7, 70])]
    populate(buffer, 10, 5)
    for url in pages:
        traffic(admin_client, redis_counter, url)  # warm: scripts loaded, connections open
    few = {url: traffic(admin_client, redis_counter, url) for url in pages}

    populate(buffer, 10_000, 5)
    started = time.monotonic()
    many = {url: traffic(admin_client, redis_counter, url) for url in pages}
    elapsed = time.monotonic() - started

    assert many == few, (few, many)  # the same commands and round trips whatever the number of tenants
    for commands, round_trips in many.values():
        assert (
            round_trips <= 11 and commands <= 20
        )  # the dashboard: 11 (beat lease, chart samples, heartbeats: one each)
    top = buffer.top_envs(shard, limit=50)
    assert (top.orgs_total, top.envs_total) == (10_000, 50_000)
    assert elapsed < 5, elapsed


def test_find_entry_reads_every_shard_in_one_round_trip(buffer, accept, redis_counter):
    env = EnvironmentFactory()
    (run_id,) = accept(env)
    buffer.find_entry("run_warm")

    redis_counter.reset()
    entry = buffer.find_entry(run_id)

    assert entry is not None and entry.env_id == env.id
    # One read per shard in one round trip: the pipeline sends EVALSHA at once (buffer/script_pipeline.py; redis-py's
    # own pipeline asked SCRIPT EXISTS first, one command and one round trip more).
    assert redis_counter.commands == buffer.shards
    assert redis_counter.round_trips == 1
    assert buffer.find_entry("run_nothere") is None


def test_dead_letter_env_buries_queued_retrying_and_leased_entries_of_that_env_only(buffer, accept):
    org = OrganizationFactory()
    doomed, kept = EnvironmentFactory(org=org), EnvironmentFactory(org=org)
    shard = buffer.shard_for(org.id)
    retrying, leased, *queued = accept(doomed, 5)
    others = accept(kept, 2)
    buffer.lease(shard, org_id=org.id, env_id=doomed.id, n=2, now_ms=NOW, lease_ms=60_000)
    buffer.requeue(shard, retrying, now_ms=NOW, delay_ms=60_000, error="deadlock")
    buffer.lease(shard, org_id=org.id, env_id=kept.id, n=1, now_ms=NOW, lease_ms=60_000)

    census = buffer.env_census(org_id=org.id, env_ids=[doomed.id, kept.id])
    assert [(c.queued, c.retrying, c.leased, c.dead, c.live) for c in census] == [(3, 1, 1, 0, 5), (1, 0, 1, 0, 2)]

    assert buffer.dead_letter_env(org_id=org.id, env_id=doomed.id, now_ms=NOW + 1, reason="env gone") == 5

    for run_id in (retrying, leased, *queued):
        entry = buffer.get(run_id, org_id=org.id)
        assert entry is not None and entry.status == "DEAD" and entry.last_error == "env gone"
    assert [buffer.get(r, org_id=org.id).status for r in others] == ["LEASED", "QUEUED"]
    assert buffer.envs(shard, org.id) == [kept.id]
    assert buffer.dead_letter_env(org_id=org.id, env_id=doomed.id, now_ms=NOW + 2, reason="again") == 0
    assert_consistent(buffer)


def test_dead_letter_env_works_through_queues_and_sets_longer_than_a_batch(buffer, monkeypatch):
    from buffer import operators

    monkeypatch.setattr(operators, "DEAD_LETTER_BATCH", 3)
    org, env, other = 1, 11, 12
    shard = buffer.shard_for(org)
    for i in range(10):
        buffer.accept(run_id=f"run_b{i}", env_id=env if i % 2 else other, org_id=org, snapshot="{}", now_ms=NOW,
                      idempotency=None, max_per_env=100)  # fmt: skip
    buffer.lease(shard, org_id=org, env_id=env, n=3, now_ms=NOW, lease_ms=60_000)
    buffer.lease(shard, org_id=org, env_id=other, n=4, now_ms=NOW, lease_ms=60_000)
    for i in (1, 3):
        buffer.requeue(shard, f"run_b{i}", now_ms=NOW, delay_ms=60_000, error="x")

    assert buffer.dead_letter_env(org_id=org, env_id=env, now_ms=NOW, reason="gone") == 5

    stats = buffer.shard_stats(now_ms=NOW)[shard]
    assert (stats.dead, stats.leased, stats.queued) == (5, 4, 1)
    assert_consistent(buffer)
