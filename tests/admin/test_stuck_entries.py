"""The StuckEntry admin (``sweep.admin.stuck_entries``): list, filters, search, the detail page read from the buffer, the
repair actions and their permission."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from mollifier_project.clock import to_ms
from runs.models import RunStatus, TaskRun
from sweep.admin.stuck_entries import report
from sweep.models import StuckEntry, StuckKind
from sweep.repair import Repaired
from tests.factories import EnvironmentFactory

pytestmark = pytest.mark.django_db

LIST = reverse("admin:sweep_stuckentry_changelist")


def change(row: StuckEntry) -> str:
    return reverse("admin:sweep_stuckentry_change", args=[row.pk])


def stuck(env, run_id: str, kind=StuckKind.STALE, *, age=timedelta(minutes=10), attempts=0, error="", env_id=None):
    now = timezone.now()
    return StuckEntry.objects.create(
        run_id=run_id, org_id=env.org_id, env_id=env_id or env.id, shard=0, kind=kind, accepted_at=now - age,
        first_seen_at=now, last_seen_at=now, attempts=attempts, last_error=error,
    )  # fmt: skip


def listed(response) -> list[str]:
    assert response.status_code == 200, response
    return [row.run_id for row in response.context["cl"].result_list]


@pytest.fixture
def rows(buffer, accept):
    """Three stuck entries in the buffer (a stale one, a dead one, one with an expired lease) of two envs."""
    env_a, env_b = EnvironmentFactory(slug="alpha"), EnvironmentFactory(slug="beta")
    stale_id, dead_id = accept(env_a, 2, now_ms=to_ms(timezone.now() - timedelta(minutes=10)))
    (expired_id,) = accept(env_b, now_ms=to_ms(timezone.now() - timedelta(days=2)))
    shard_a, shard_b = buffer.shard_for(env_a.org_id), buffer.shard_for(env_b.org_id)
    buffer.lease(shard_a, org_id=env_a.org_id, env_id=env_a.id, n=2, now_ms=to_ms(timezone.now()), lease_ms=60_000)
    buffer.release(shard_a, [stale_id])
    buffer.dead_letter(shard_a, dead_id, now_ms=to_ms(timezone.now()), reason="environment gone")
    buffer.lease(shard_b, org_id=env_b.org_id, env_id=env_b.id, n=1, now_ms=to_ms(timezone.now()) - 120_000, lease_ms=1)
    return {
        "envs": (env_a, env_b),
        "stale": stuck(env_a, stale_id),
        "dead": stuck(env_a, dead_id, StuckKind.DEAD, error="environment gone"),
        "expired": stuck(env_b, expired_id, StuckKind.EXPIRED_LEASE, age=timedelta(days=2), attempts=1),
    }


# ---------------------------------------------------------------------------------------- list, filters


def test_the_list_shows_age_kind_attempts_error_and_tenants(admin_client, rows):
    response = admin_client.get(LIST)

    assert listed(response) == [rows["expired"].run_id, rows["stale"].run_id, rows["dead"].run_id]
    html = response.content.decode()
    env_a, _ = rows["envs"]
    assert f"{env_a.org.slug}/alpha ({env_a.id})" in html
    assert "environment gone" in html
    assert "dead-lettered" in html  # the kind's label
    assert "2 d" in html and "10 min" in html  # ages
    assert reverse("buffer_admin:dashboard") in html  # the way to the dashboard


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"kind__exact": "DEAD"}, ["dead"]),
        ({"age": "5m-1h"}, ["stale", "dead"]),
        ({"age": "gt1d"}, ["expired"]),
        ({"age": "lt5m"}, []),
        ({"state": "open"}, ["expired", "stale", "dead"]),
        ({"state": "resolved"}, []),
    ],
)
def test_the_list_filters(admin_client, rows, params, expected):
    assert listed(admin_client.get(LIST, params)) == [rows[k].run_id for k in expected]


def test_the_list_filters_by_org_and_env(admin_client, rows):
    env_a, env_b = rows["envs"]

    assert listed(admin_client.get(LIST, {"env_id": env_b.id})) == [rows["expired"].run_id]
    assert listed(admin_client.get(LIST, {"org_id": env_a.org_id})) == [rows["stale"].run_id, rows["dead"].run_id]
    html = admin_client.get(LIST).content.decode()
    assert f"?env_id={env_a.id}" in html and f"?org_id={env_b.org_id}" in html  # offered as choices


def test_the_list_is_searched_by_exact_run_id(admin_client, rows):
    run_id = rows["dead"].run_id

    assert listed(admin_client.get(LIST, {"q": run_id})) == [run_id]
    assert listed(admin_client.get(LIST, {"q": run_id[:-1]})) == []


def test_rows_of_deleted_tenants_still_list(admin_client, buffer):
    env = EnvironmentFactory()
    stuck(env, "run_orphan", env_id=999_999)

    assert "999999 (deleted)" in admin_client.get(LIST).content.decode()


# -------------------------------------------------------------------------------------------- detail


def test_the_detail_page_shows_the_entry_and_its_pretty_snapshot(admin_client, rows):
    row = rows["dead"]

    html = admin_client.get(change(row)).content.decode()

    assert "DEAD, attempts 0" in html
    assert "last error: environment gone" in html
    assert "\n  &quot;payload_type&quot;: &quot;application/super+json&quot;," in html  # indented JSON, escaped
    assert "<pre" in html
    assert reverse("admin:runs_taskrun_buffered", args=[row.run_id]) in html
    assert reverse("buffer_admin:env", args=[row.org_id, row.env_id]) in html


def test_the_detail_page_of_a_drained_entry_says_it_is_gone(admin_client, buffer):
    row = stuck(EnvironmentFactory(), "run_gone")

    assert "gone: the entry has left the buffer" in admin_client.get(change(row)).content.decode()


def test_rows_cannot_be_added_changed_or_deleted(admin_client, rows):
    row = rows["stale"]

    assert admin_client.get(reverse("admin:sweep_stuckentry_add")).status_code == 403
    assert admin_client.post(change(row), {"attempts": 9}).status_code == 403
    assert admin_client.post(reverse("admin:sweep_stuckentry_delete", args=[row.pk])).status_code == 403
    assert "delete_selected" not in admin_client.get(LIST).context["action_form"].fields["action"].choices.__repr__()


# ----------------------------------------------------------------------------------- actions, permission


def act(client, action: str, *rows_: StuckEntry):
    return client.post(LIST, {"action": action, "_selected_action": [r.pk for r in rows_]}, follow=True)


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


ACTIONS = ["requeue_now", "redrive_dead_letters", "materialise_now", "fail_entries", "cancel_runs"]


def test_read_only_staff_see_no_actions_and_get_403_when_posting_one(viewer_client, rows):
    response = viewer_client.get(LIST)

    assert response.status_code == 200
    assert listed(response)  # they can look
    assert response.context["action_form"] is None or not [
        c for c in response.context["action_form"].fields["action"].choices if c[0]
    ]
    for action in ACTIONS:
        assert act(viewer_client, action, rows["dead"]).status_code == 403
    entry = rows["dead"]
    assert viewer_client.get(change(entry)).status_code == 200


def test_repairers_see_every_action(repairer_client, rows):
    choices = {c[0] for c in repairer_client.get(LIST).context["action_form"].fields["action"].choices if c[0]}

    assert choices == set(ACTIONS)


def test_requeue_now_reports_what_changed_and_what_was_handled(repairer_client, buffer, rows):
    response = act(repairer_client, "requeue_now", rows["stale"], rows["dead"], rows["expired"])

    # The stale one is queued already: nothing to requeue there.
    assert messages_of(response) == ["Requeued 2 entries; 1 was already handled."]
    env_a, env_b = rows["envs"]
    assert buffer.get(rows["dead"].run_id, org_id=env_a.org_id).status == "QUEUED"
    assert buffer.get(rows["expired"].run_id, org_id=env_b.org_id).status == "QUEUED"


def test_redrive_puts_the_dead_letters_of_the_selected_envs_back(repairer_client, buffer, rows):
    response = act(repairer_client, "redrive_dead_letters", rows["dead"])

    assert messages_of(response) == ["Re-drove 1 entry."]
    env_a, _ = rows["envs"]
    entry = buffer.get(rows["dead"].run_id, org_id=env_a.org_id)
    assert entry.status == "QUEUED" and entry.attempts == 0


@pytest.mark.django_db(transaction=True)
def test_materialise_now_writes_the_rows(repairer_client, rows):
    response = act(repairer_client, "materialise_now", rows["stale"], rows["dead"], rows["expired"])

    assert messages_of(response) == ["Materialised 3 entries."]
    assert TaskRun.objects.filter(id__in=[rows[k].run_id for k in ("stale", "dead", "expired")]).count() == 3


@pytest.mark.django_db(transaction=True)
def test_fail_writes_system_failure_rows(repairer_client, rows):
    response = act(repairer_client, "fail_entries", rows["dead"])

    assert messages_of(response) == ["Failed 1 entry."]
    assert TaskRun.objects.get(id=rows["dead"].run_id).status == RunStatus.SYSTEM_FAILURE


@pytest.mark.django_db(transaction=True)
def test_cancel_writes_canceled_rows_and_a_second_cancel_was_already_handled(repairer_client, rows):
    assert messages_of(act(repairer_client, "cancel_runs", rows["stale"])) == ["Cancelled 1 entry."]
    assert TaskRun.objects.get(id=rows["stale"].run_id).status == RunStatus.CANCELED

    assert messages_of(act(repairer_client, "cancel_runs", rows["stale"])) == [
        "Cancelled 0 entries; 1 was already handled."
    ]


def test_the_report_reads_like_a_sentence():
    assert report("Requeued", Repaired(12, 3)) == "Requeued 12 entries; 3 were already handled."
    assert report("Requeued", Repaired(1, 1)) == "Requeued 1 entry; 1 was already handled."
    assert report("Failed", Repaired(0, 0)) == "Failed 0 entries."
