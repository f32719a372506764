"""The operator screens used as an operator might misuse them (docs/runbook.md#confirmation): a confirmation
posted twice, a confirmation page gone stale before it was confirmed, markup in a reason, a crafted ``next``,
and staff without the right permission posting. Each acts at most on what was shown and confirmed, says what it
did, records it, and leaves markup as text. Real Redis and Postgres."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
from django.contrib.admin.models import LogEntry
from django.urls import reverse
from django.utils import timezone

from sweep.admin.stuck_entries import REASON_MAX
from sweep.models import OperatorAction, StuckEntry, StuckKind
from tests.admin.conftest import _staff
from tests.admin.test_stuck_entries import LIST, act, messages_of
from tests.factories import EnvironmentFactory

pytestmark = pytest.mark.django_db

SCRIPT = '<script>alert("x")</script>'


def steer_env(env, action: str) -> str:
    return reverse("buffer_admin:steer_env", args=[env.org_id, env.id, action])


def env_url(env) -> str:
    return reverse("buffer_admin:env", args=[env.org_id, env.id])


# ------------------------------------------------------------------------------------------- posted twice


def test_a_redrive_confirmed_twice_redrives_once_and_the_second_says_already_handled(repairer_client, buffer, rows):
    dead = rows["dead"]

    first = act(repairer_client, "redrive_dead_letters", dead, reason="once")
    second = act(repairer_client, "redrive_dead_letters", dead, reason="once")

    assert messages_of(first) == ["Re-drive: 1 re-driven, 0 already handled."]
    assert messages_of(second) == ["Re-drive: 0 re-driven, 1 already handled."]
    entry = buffer.get(dead.run_id, org_id=dead.org_id)
    assert entry is not None and (entry.status, entry.attempts) == ("QUEUED", 0)
    env_a, _ = rows["envs"]
    (census,) = buffer.env_census(org_id=env_a.org_id, env_ids=[env_a.id])
    assert (census.queued, census.dead) == (2, 0)  # the stale entry and the re-driven one, each once
    counts = list(OperatorAction.objects.order_by("id").values_list("counts", flat=True))
    assert [(c["changed"], c["already_handled"]) for c in counts] == [(1, 0), (0, 1)]


@pytest.mark.django_db(transaction=True)
def test_a_pause_confirmed_twice_says_the_second_time_that_it_was_already_paused(repairer_client, buffer):
    env = EnvironmentFactory()
    data = {"confirm": "1", "next": env_url(env), "reason": "twice"}

    first = repairer_client.post(steer_env(env, "pause"), data, follow=True)
    second = repairer_client.post(steer_env(env, "pause"), data, follow=True)

    assert messages_of(first) == [f"Env {env.org.slug}/{env.slug} paused."]
    said = messages_of(second)
    assert said == [f"Env {env.org.slug}/{env.slug} was already paused."], said
    assert [m.level_tag for m in second.context["messages"]] == ["warning"]  # not a success: nothing changed
    assert buffer.switches(buffer.shard_for(env.org_id)).paused(env.org_id, env.id)
    counts = list(OperatorAction.objects.order_by("id").values_list("counts", flat=True))
    assert counts == [{"changed": 1, "already": 0}, {"changed": 0, "already": 1}]


# ------------------------------------------------------------------------------------- a stale confirmation


def _stuck_rows(env, n: int, start: int = 0) -> list[StuckEntry]:
    now = timezone.now()
    return StuckEntry.objects.bulk_create(
        StuckEntry(run_id=f"run_stale{i:05d}", org_id=env.org_id, env_id=env.id, shard=0, kind=StuckKind.STALE,
                   accepted_at=now, first_seen_at=now, last_seen_at=now)
        for i in range(start, start + n)
    )  # fmt: skip


def test_select_all_acts_on_no_more_than_the_confirmation_page_counted(repairer_client, buffer):
    """The sweep finds more entries between the question and the answer: "select all" must not act on rows
    nobody was asked about. The page asks again with the new count, and nothing changes."""
    env = EnvironmentFactory()
    rows = _stuck_rows(env, 3)
    asked = repairer_client.post(
        f"{LIST}?env_id={env.id}", {"action": "requeue_now", "select_across": "1", "_selected_action": [rows[0].pk]}
    )
    assert "<strong>3</strong> selected entries" in asked.content.decode()
    form = {
        "action": "requeue_now", "confirm": "yes", "reason": "", "select_across": asked.context["select_across"],
        "_selected_action": asked.context["selected"], "confirmed_count": asked.context["count"],
    }  # fmt: skip
    _stuck_rows(env, 2, start=3)  # found by the sweep meanwhile

    again = repairer_client.post(f"{LIST}?env_id={env.id}", form)

    assert again.status_code == 200
    html = again.content.decode()
    assert "<strong>5</strong> selected entries" in html and "changed since" in html
    assert OperatorAction.objects.count() == 0 and LogEntry.objects.count() == 0


def test_a_pause_confirmation_for_an_env_paused_meanwhile_says_so(repairer_client, buffer):
    env = EnvironmentFactory()
    buffer.pause(org_id=env.org_id, env_id=env.id)  # another operator, after this one's env page was drawn

    asked = repairer_client.post(steer_env(env, "pause"), {"next": env_url(env)})

    assert asked.status_code == 200
    assert "already paused" in asked.content.decode()


# ----------------------------------------------------------------------------------------- markup, next


@pytest.mark.django_db(transaction=True)
def test_markup_in_a_reason_stays_text_on_every_page_that_shows_it(repairer_client, buffer, rows, admin_client):
    env = EnvironmentFactory()
    repairer_client.post(steer_env(env, "pause"), {"confirm": "1", "next": env_url(env), "reason": SCRIPT})
    act(repairer_client, "redrive_dead_letters", rows["dead"], reason=SCRIPT)
    assert list(OperatorAction.objects.values_list("reason", flat=True)) == [SCRIPT, SCRIPT]

    pages = [reverse("admin:sweep_operatoraction_changelist"),
             *(reverse("admin:sweep_operatoraction_change", args=[pk])
               for pk in OperatorAction.objects.values_list("pk", flat=True)),
             reverse("admin:sweep_stuckentry_history", args=[rows["dead"].pk])]  # fmt: skip
    for url in pages:
        html = admin_client.get(url).content.decode()
        assert "<script>alert" not in html, url
        assert "&lt;script&gt;alert" in html, url


@pytest.mark.django_db(transaction=True)
def test_a_switch_reason_is_cut_as_a_repairs_is(repairer_client, buffer):
    env = EnvironmentFactory()
    repairer_client.post(steer_env(env, "pause"), {"confirm": "1", "next": env_url(env), "reason": "x" * 100_000})
    assert len(OperatorAction.objects.get().reason) == REASON_MAX


@pytest.mark.parametrize(
    "target", ["//evil.example/", "/\\evil.example/", "https://evil.example/", "/\t/evil.example/"]
)
@pytest.mark.django_db(transaction=True)
def test_next_never_leads_off_the_site(repairer_client, buffer, target):
    """``next`` comes back in a POST (CSRF-protected, but a stale or copied page may carry anything): the
    redirect stays on this site, whatever a browser would make of a backslash or a tab."""
    env = EnvironmentFactory()
    done = repairer_client.post(steer_env(env, "resume"), {"next": target})
    assert done.status_code == 302
    location = done["Location"]
    assert location.startswith("/") and not location.startswith("//"), location
    assert "\\" not in location and "\t" not in location and urlsplit(location).netloc == "", location


# ------------------------------------------------------------------------------------------- permissions


def test_steering_needs_the_view_permission_too(client, buffer):
    """The confirmation page names the org and env and counts their entries: a buffer page like the others."""
    env = EnvironmentFactory()
    client.force_login(_staff("blind-repairer", "sweep.repair_buffer"))

    for action in ("pause", "close"):
        assert client.post(steer_env(env, action), {"next": env_url(env)}).status_code == 403
    assert client.post(steer_env(env, "pause"), {"confirm": "1"}).status_code == 403
    assert not buffer.switches(buffer.shard_for(env.org_id)).paused(env.org_id, env.id)
    assert OperatorAction.objects.count() == 0


@pytest.mark.parametrize("target", ["/\\evil.example/", "/\t/evil.example/", "//evil.example/"])
@pytest.mark.django_db(transaction=True)
def test_the_confirmation_pages_go_back_link_stays_on_the_site(repairer_client, buffer, target):
    """The page that asks first carries ``next`` into its "No, go back" link: a browser reads ``/\\host`` as
    another site, so such a ``next`` is replaced by the dashboard before it reaches the page."""
    env = EnvironmentFactory()
    page = repairer_client.post(steer_env(env, "pause"), {"next": target})
    assert page.status_code == 200
    back = re.search(r'<a href="([^"]*)">No, go back</a>', page.content.decode())
    assert back, page.content.decode()[:2000]
    assert back.group(1) == reverse("buffer_admin:dashboard"), back.group(1)
