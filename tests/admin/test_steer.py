"""Steering from the buffer pages (``sweep.admin.views.steer_switch`` over ``sweep.steer``): pause/resume an
env or an org, close/open an env's intake, as POST forms guarded by ``sweep.repair_buffer``, pause and close
asking first; the dashboard names and links what is switched; and the pages are findable (admin index,
sidebar, "View site") and live ("as of", a refresh the operator can switch off). Real Redis, Postgres and
drain rounds."""

from __future__ import annotations

import json

import pytest
from django.conf import settings
from django.urls import reverse

from buffer.buffer import Buffer
from drainer import drain
from drainer.limits import DrainLimits
from runs import auth
from runs.models import TaskRun
from runs.tenants import ensure_tenant, issue_api_key
from tests.factories import EnvironmentFactory, OrganizationFactory

DASHBOARD = "/admin/buffer/"


def env_url(env) -> str:
    return reverse("buffer_admin:env", args=[env.org_id, env.id])


def steer_env(env, action: str) -> str:
    return reverse("buffer_admin:steer_env", args=[env.org_id, env.id, action])


def drain_round(buffer: Buffer, org_id: int) -> None:
    drain.drain_shard(buffer, shard=buffer.shard_for(org_id), limits=DrainLimits.from_settings(settings.MOLLIFIER))


@pytest.mark.django_db(transaction=True)
def test_pause_from_the_env_page_asks_first_then_stops_the_drain_and_resume_lets_it_drain(
    repairer_client, buffer, accept
):
    env, other = EnvironmentFactory(), EnvironmentFactory()
    accept(env, 3)
    accept(other, 2)
    page = repairer_client.get(env_url(env)).content.decode()
    assert steer_env(env, "pause") in page  # the button is on the env page

    asked = repairer_client.post(steer_env(env, "pause"), {"next": env_url(env)})
    assert asked.status_code == 200
    text = asked.content.decode()
    assert f"{env.org.slug}/{env.slug}" in text and "3 queued" in text and 'name="confirm"' in text
    assert not buffer.switches(buffer.shard_for(env.org_id)).paused(env.org_id, env.id)  # nothing changed yet

    done = repairer_client.post(steer_env(env, "pause"), {"confirm": "1", "next": env_url(env)})
    assert done.status_code == 302 and done["Location"] == env_url(env)
    drain_round(buffer, env.org_id)
    drain_round(buffer, other.org_id)
    assert TaskRun.objects.filter(env=env).count() == 0
    assert TaskRun.objects.filter(env=other).count() == 2

    dashboard = repairer_client.get(DASHBOARD).content.decode()
    assert f'<a href="{env_url(env)}">{env}</a>' in dashboard  # named and linked
    assert steer_env(env, "resume") in dashboard

    resumed = repairer_client.post(steer_env(env, "resume"), {"next": DASHBOARD})  # no confirmation step
    assert resumed.status_code == 302
    drain_round(buffer, env.org_id)
    assert TaskRun.objects.filter(env=env).count() == 3
    assert f'<a href="{env_url(env)}">' not in repairer_client.get(DASHBOARD).content.decode()


@pytest.mark.django_db(transaction=True)
def test_pausing_the_whole_org_from_the_ui_stops_every_env_until_resumed(repairer_client, buffer, accept):
    env = EnvironmentFactory()
    sibling = EnvironmentFactory(org=env.org)
    accept(env, 2)
    accept(sibling, 1)
    url = reverse("buffer_admin:steer_org", args=[env.org_id, "pause"])

    asked = repairer_client.post(url).content.decode()
    assert f"organization {env.org.slug}" in asked and "3 queued" in asked
    repairer_client.post(url, {"confirm": "1"})
    drain_round(buffer, env.org_id)
    assert TaskRun.objects.count() == 0
    assert env.org.slug in repairer_client.get(DASHBOARD).content.decode()

    repairer_client.post(reverse("buffer_admin:steer_org", args=[env.org_id, "resume"]))
    drain_round(buffer, env.org_id)
    assert TaskRun.objects.count() == 3


@pytest.mark.django_db(transaction=True)
def test_close_from_the_ui_answers_429_to_triggers_and_open_accepts_again(
    client, repairer_client, key_prefix, mollifier_settings
):
    mollifier_settings(ENABLED=True, TRIP_THRESHOLD=1_000_000)  # not tripped: the closed intake alone diverts
    tenant = ensure_tenant("steer-close", "dev", enrol=True)
    secret = issue_api_key(tenant.env)[1]
    auth.clear_cache()
    url = reverse("buffer_admin:steer_env", args=[tenant.org.id, tenant.env.id, "close"])

    def trigger():
        return client.post("/api/v1/tasks/hello/trigger", data=json.dumps({"payload": "{}"}),
                           content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {secret}")  # fmt: skip

    assert "steer-close/dev" in repairer_client.post(url).content.decode()  # asks first
    assert trigger().status_code == 200  # still open until confirmed
    repairer_client.post(url, {"confirm": "1"})
    refused = trigger()
    assert refused.status_code == 429 and "closed" in refused.json()["error"]
    dashboard = repairer_client.get(DASHBOARD).content.decode()
    assert "Envs with intake closed" in dashboard and "steer-close/dev" in dashboard

    repairer_client.post(reverse("buffer_admin:steer_env", args=[tenant.org.id, tenant.env.id, "open"]))
    assert trigger().status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize("action", ["pause", "resume", "close", "open"])
def test_staff_without_the_repair_permission_get_403_and_nothing_changes(viewer_client, buffer, action):
    env = EnvironmentFactory()
    shard = buffer.shard_for(env.org_id)
    buffer.pause(org_id=env.org_id, env_id=env.id)
    buffer.close_intake(org_id=env.org_id, env_id=env.id)

    for url in (steer_env(env, action), reverse("buffer_admin:steer_org", args=[env.org_id, action])):
        assert viewer_client.post(url, {"confirm": "1"}).status_code == 403
    assert steer_env(env, action) not in viewer_client.get(env_url(env)).content.decode()  # no buttons shown
    switches = buffer.switches(shard)
    assert switches.paused(env.org_id, env.id) and switches.closed_envs == {env.id}


@pytest.mark.django_db
def test_a_get_an_unknown_switch_or_another_orgs_env_is_refused(repairer_client, buffer):
    env, stranger = EnvironmentFactory(), OrganizationFactory()
    assert repairer_client.get(steer_env(env, "pause")).status_code == 405
    assert repairer_client.post(steer_env(env, "explode"), {"confirm": "1"}).status_code == 404
    wrong = reverse("buffer_admin:steer_env", args=[stranger.id, env.id, "pause"])
    assert repairer_client.post(wrong, {"confirm": "1"}).status_code == 404
    assert not buffer.switches(buffer.shard_for(env.org_id)).paused(env.org_id, env.id)
    assert not buffer.switches(buffer.shard_for(stranger.id)).paused(stranger.id, env.id)
    org_close = reverse("buffer_admin:steer_org", args=[env.org_id, "close"])
    assert repairer_client.post(org_close).status_code == 404  # an intake is per env: no confirmation page


@pytest.mark.django_db
def test_the_confirmation_escapes_names_and_only_redirects_within_the_site(repairer_client, buffer):
    org = OrganizationFactory(slug="<b>evil</b>")
    env = EnvironmentFactory(org=org)
    asked = repairer_client.post(steer_env(env, "pause"), {"next": "https://elsewhere.example/"})
    assert "&lt;b&gt;evil&lt;/b&gt;" in asked.content.decode() and "<b>evil</b>" not in asked.content.decode()
    done = repairer_client.post(steer_env(env, "pause"), {"confirm": "1", "next": "//elsewhere.example/"})
    assert done["Location"] == DASHBOARD


# ------------------------------------------------------------------------------------ findable and live


@pytest.mark.django_db
def test_the_dashboard_is_on_the_admin_index_in_the_sidebar_and_is_the_view_site_link(admin_client, buffer):
    index = admin_client.get("/admin/").content.decode()
    assert f'<a href="{DASHBOARD}"' in index and "Buffer dashboard" in index
    assert f'<a href="{DASHBOARD}">View site</a>' in index
    sidebar = admin_client.get(
        reverse("admin:runs_organization_changelist")
    ).content.decode()  # (the wide lists have none)
    assert 'id="nav-sidebar"' in sidebar
    nav = sidebar[sidebar.index('id="nav-sidebar"') :]
    assert f'<a href="{DASHBOARD}"' in nav[: nav.index("</nav>")]


@pytest.mark.django_db
def test_every_buffer_page_says_as_of_when_and_refreshes_unless_switched_off(admin_client, buffer):
    env = EnvironmentFactory()
    for url in (DASHBOARD, reverse("buffer_admin:shard", args=[0]), env_url(env)):
        page = admin_client.get(url).content.decode()
        assert 'id="as-of"' in page and "As of 20" in page and " UTC" in page, url
        assert '<meta http-equiv="refresh" content="15">' in page, url
        assert 'href="?refresh=0"' in page, url
        off = admin_client.get(url, {"refresh": "0"}).content.decode()
        assert 'http-equiv="refresh"' not in off and "Not refreshing" in off, url
    kept = admin_client.get(DASHBOARD, {"all": "1"}).content.decode()
    assert 'href="?all=1&amp;refresh=0"' in kept  # switching it off keeps the page's other parameters
    assert (
        'id="refresh-switch" href="?all=1"'
        in admin_client.get(DASHBOARD, {"all": "1", "refresh": "0"}).content.decode()
    )


@pytest.mark.django_db
def test_a_switch_from_the_ui_is_in_the_audit_trail_with_its_user_and_reason(repairer_client, buffer):
    from sweep.models import OperatorAction

    env = EnvironmentFactory()
    asked = repairer_client.post(steer_env(env, "pause"), {"next": env_url(env)}).content.decode()
    assert 'name="reason"' in asked and not OperatorAction.objects.exists()  # asking records nothing

    repairer_client.post(steer_env(env, "pause"), {"confirm": "1", "reason": "INC-7 <storm>", "next": env_url(env)})
    repairer_client.post(reverse("buffer_admin:steer_org", args=[env.org_id, "resume"]))

    rows = list(OperatorAction.objects.order_by("id"))
    assert [(r.action, r.source, r.env_ids, r.org_ids, r.reason, r.counts) for r in rows] == [
        ("pause", "admin", [env.id], [env.org_id], "INC-7 <storm>", {"changed": 1, "already": 0}),
        ("resume", "admin", [], [env.org_id], "", {"changed": 0, "already": 1}),
    ]
    assert {r.user for r in rows} == {"repairer"}  # the logged-in admin user (tests/admin/conftest.py)


@pytest.mark.django_db
def test_staff_without_the_buffer_view_permission_see_no_dashboard_entry(viewer_client):
    # The dashboard answers them 403 (sweep.view_buffer), so the index must not offer it.
    index = viewer_client.get("/admin/").content.decode()
    assert "Buffer dashboard" not in index and DASHBOARD not in index  # no entry, and no "View site" link to it
