"""Steering from the org and env change pages (``runs.admin.steering``) and the reason asked on a deletion that
strands buffered runs (``runs.admin.deletion``): issue 18, item 5. The buttons post to the buffer pages' switch
view, which asks first and records the switch; real Redis, Postgres and drain rounds."""

from __future__ import annotations

import html as html_lib
import re

import pytest
from django.test import Client
from django.urls import reverse

from runs.models import TaskRun
from sweep.models import OperatorAction
from tests.admin.conftest import _staff
from tests.admin.test_deletion import delete_url, doomed  # noqa: F401  (doomed: a fixture)
from tests.admin.test_steer import drain_round
from tests.factories import EnvironmentFactory


def change_url(obj) -> str:
    return reverse(f"admin:runs_{obj._meta.model_name}_change", args=[obj.pk])


def buttons(html: str) -> dict[str, str]:
    """Every switch form on a page: its button label → the URL it posts to."""
    return {
        label: action
        for action, label in re.findall(
            r'<form method="post" action="([^"]+)" class="buffer-switch">.*?<input type="submit" value="([^"]+)">', html
        )
    }


def state(html: str) -> str:
    match = re.search(r'<p id="buffer-switches">(.*?)</p>', html, re.S)
    assert match, html[:3000]
    return " ".join(html_lib.unescape(re.sub(r"<[^>]+>", "", match.group(1))).split())


@pytest.fixture
def steerer(db) -> Client:
    """Staff who may view orgs and envs and the buffer pages, and repair the buffer (not a superuser)."""
    client = Client()
    client.force_login(
        _staff("steerer", "runs.view_organization", "runs.view_environment", "sweep.view_buffer", "sweep.repair_buffer")
    )
    return client


@pytest.mark.django_db(transaction=True)
def test_the_org_page_pauses_and_resumes_the_whole_org_with_a_real_drain_round(steerer, buffer, accept):
    env = EnvironmentFactory()
    sibling = EnvironmentFactory(org=env.org)
    accept(env, 2)
    accept(sibling, 1)
    page = change_url(env.org)
    html = steerer.get(page).content.decode()
    assert state(html) == "Buffer: draining."
    pause = reverse("buffer_admin:steer_org", args=[env.org_id, "pause"])
    assert buttons(html) == {"Pause the whole org…": pause}

    asked = steerer.post(pause, {"next": page}).content.decode()  # the confirmation page; nothing changes yet
    assert f"organization {env.org.slug}" in asked and "3 queued" in asked
    assert buffer.switches(buffer.shard_for(env.org_id)).paused_orgs == set()
    done = steerer.post(pause, {"next": page, "confirm": "1", "reason": "storm from a bad deploy"})
    assert done.status_code == 302 and done["Location"] == page
    drain_round(buffer, env.org_id)
    assert TaskRun.objects.count() == 0

    dashboard = steerer.get(reverse("buffer_admin:dashboard")).content.decode()
    assert f'<a href="{page}"><strong>{env.org.slug}</strong></a>' in dashboard  # the paused org, linked here
    html = steerer.get(page).content.decode()
    assert state(html).startswith("Buffer: the org is paused")
    assert buttons(html) == {"Resume the whole org": reverse("buffer_admin:steer_org", args=[env.org_id, "resume"])}
    (row,) = OperatorAction.objects.all()
    assert (row.action, row.user, row.reason) == ("pause", "steerer", "storm from a bad deploy")

    resumed = steerer.post(buttons(html)["Resume the whole org"], {"next": page})  # resume does not ask
    assert resumed.status_code == 302 and resumed["Location"] == page
    drain_round(buffer, env.org_id)
    assert TaskRun.objects.count() == 3
    assert state(steerer.get(page).content.decode()) == "Buffer: draining."


@pytest.mark.django_db
def test_the_env_page_offers_pause_and_close_and_says_which_are_on(steerer, buffer):
    env = EnvironmentFactory()
    page = change_url(env)
    html = steerer.get(page).content.decode()
    assert state(html) == "Buffer: draining; intake open. Buffer page"
    assert set(buttons(html)) == {"Pause draining…", "Close intake…"}

    buffer.pause(org_id=env.org_id, env_id=env.id)
    buffer.close_intake(org_id=env.org_id, env_id=env.id)
    html = steerer.get(page).content.decode()

    assert state(html).startswith("Buffer: paused (its runs are accepted, not drained); intake closed")
    assert buttons(html) == {
        "Resume draining": reverse("buffer_admin:steer_env", args=[env.org_id, env.id, "resume"]),
        "Open intake": reverse("buffer_admin:steer_env", args=[env.org_id, env.id, "open"]),
    }


@pytest.mark.django_db
def test_staff_without_the_repair_permission_see_the_state_but_no_button(viewer_client, buffer):
    env = EnvironmentFactory()
    buffer.pause(org_id=env.org_id)
    for obj in (env.org, env):
        html = viewer_client.get(change_url(obj)).content.decode()
        assert "the org is paused" in state(html)
        assert buttons(html) == {}


@pytest.mark.django_db
def test_an_unreachable_buffer_is_said_and_offers_no_button(steerer, settings):
    env = EnvironmentFactory()
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    html = steerer.get(change_url(env.org)).content.decode()
    assert state(html).startswith("Buffer: The buffer's Redis is unreachable")
    assert buttons(html) == {}


# ------------------------------------------------------------------------ a reason on the delete pages


REASON_BOX = 'name="reason"'


@pytest.mark.django_db
def test_the_delete_pages_ask_a_reason_only_when_buffered_runs_would_be_stranded(admin_client, doomed):  # noqa: F811
    org, busy, quiet, *_ = doomed
    assert REASON_BOX in admin_client.get(delete_url(busy)).content.decode()
    assert REASON_BOX in admin_client.get(delete_url(org)).content.decode()
    assert REASON_BOX not in admin_client.get(delete_url(quiet)).content.decode()
    selected = admin_client.post(
        reverse("admin:runs_environment_changelist"), {"action": "delete_selected", "_selected_action": [busy.pk]}
    )
    assert REASON_BOX in selected.content.decode()
    nothing = admin_client.post(
        reverse("admin:runs_environment_changelist"), {"action": "delete_selected", "_selected_action": [quiet.pk]}
    )
    assert REASON_BOX not in nothing.content.decode() and "Are you sure" in nothing.content.decode()


@pytest.mark.django_db(transaction=True)
def test_the_reason_given_on_the_delete_page_is_in_the_audit_trail(admin_client, doomed):  # noqa: F811
    _org, busy, *_ = doomed

    admin_client.post(delete_url(busy), {"post": "yes", "reason": "  tenant offboarded  "}, follow=True)

    (row,) = OperatorAction.objects.all()
    assert (row.action, row.env_ids, row.counts, row.reason) == (
        "delete envs", [busy.id], {"dead_lettered": 5}, "tenant offboarded"
    )  # fmt: skip


@pytest.mark.django_db(transaction=True)
def test_the_reason_given_on_the_delete_selected_page_is_in_the_audit_trail(admin_client, doomed):  # noqa: F811
    org, *_ = doomed

    admin_client.post(
        reverse("admin:runs_organization_changelist"),
        {"action": "delete_selected", "_selected_action": [org.pk], "post": "yes", "reason": "org closed"},
        follow=True,
    )

    (row,) = OperatorAction.objects.all()
    assert (row.action, row.org_ids, row.reason) == ("delete envs", [org.id], "org closed")
