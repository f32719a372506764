"""The StuckEntry admin (``sweep.admin.stuck_entries``): list, filters, search, the detail page read from the buffer, the
repair actions and their permission."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from mollifier_project.clock import to_ms
from runs.models import RunStatus, TaskRun
from sweep.admin.stuck_entries import report
from sweep.models import StuckEntry, StuckKind
from sweep.repair import Repaired
from tests.admin.conftest import stuck
from tests.factories import EnvironmentFactory

pytestmark = pytest.mark.django_db

LIST = reverse("admin:sweep_stuckentry_changelist")


def change(row: StuckEntry) -> str:
    return reverse("admin:sweep_stuckentry_change", args=[row.pk])


def listed(response) -> list[str]:
    assert response.status_code == 200, response
    return [row.run_id for row in response.context["cl"].result_list]


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


def act(client, action: str, *rows_: StuckEntry, reason: str = ""):
    """An action as confirmed on its confirmation page (``tests/admin/test_audit.py`` covers the asking)."""
    data = {"action": action, "_selected_action": [r.pk for r in rows_], "confirm": "yes", "reason": reason}
    return client.post(LIST, data, follow=True)


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


ACTIONS = [
    "requeue_now",
    "redrive_dead_letters",
    "redrive_whole_envs",
    "materialise_now",
    "fail_entries",
    "cancel_runs",
]


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
    assert messages_of(response) == ["Requeue now: 2 requeued, 1 already handled."]
    env_a, env_b = rows["envs"]
    assert buffer.get(rows["dead"].run_id, org_id=env_a.org_id).status == "QUEUED"
    assert buffer.get(rows["expired"].run_id, org_id=env_b.org_id).status == "QUEUED"


def test_redrive_puts_the_selected_dead_letter_back(repairer_client, buffer, rows):
    response = act(repairer_client, "redrive_dead_letters", rows["dead"])

    assert messages_of(response) == ["Re-drive: 1 re-driven, 0 already handled."]
    env_a, _ = rows["envs"]
    entry = buffer.get(rows["dead"].run_id, org_id=env_a.org_id)
    assert entry.status == "QUEUED" and entry.attempts == 0


@pytest.mark.django_db(transaction=True)
def test_materialise_now_writes_the_rows(repairer_client, rows):
    response = act(repairer_client, "materialise_now", rows["stale"], rows["dead"], rows["expired"])

    assert messages_of(response) == ["Materialise now: 3 materialised, 0 already handled."]
    assert TaskRun.objects.filter(id__in=[rows[k].run_id for k in ("stale", "dead", "expired")]).count() == 3


@pytest.mark.django_db(transaction=True)
def test_fail_writes_system_failure_rows(repairer_client, rows):
    response = act(repairer_client, "fail_entries", rows["dead"])

    assert messages_of(response) == ["Fail: 1 failed, 0 already handled."]
    assert TaskRun.objects.get(id=rows["dead"].run_id).status == RunStatus.SYSTEM_FAILURE


@pytest.mark.django_db(transaction=True)
def test_cancel_writes_canceled_rows_and_a_second_cancel_was_already_handled(repairer_client, rows):
    assert messages_of(act(repairer_client, "cancel_runs", rows["stale"])) == [
        "Cancel: 1 cancelled, 0 already handled."
    ]
    assert TaskRun.objects.get(id=rows["stale"].run_id).status == RunStatus.CANCELED

    assert messages_of(act(repairer_client, "cancel_runs", rows["stale"])) == [
        "Cancel: 0 cancelled, 1 already handled."
    ]


def test_the_report_names_every_outcome_that_happened():
    assert report("Requeue now", Repaired("requeued", 12, 3)) == "Requeue now: 12 requeued, 3 already handled."
    assert report("Fail", Repaired("failed", 0, 0)) == "Fail: 0 failed, 0 already handled."
    everything = Repaired(
        "cancelled", 3, 1, existed=1, cancelled_rows=1, failed_rows=1, dead=2, retrying=1, released=1, held=1,
        dead_reasons=("a", "b", "c", "d"),
    )  # fmt: skip
    assert report("Cancel", everything) == (
        "Cancel: 3 cancelled (1 held by a drainer, which writes the row), 1 already had a row (acked, row "
        "unchanged), 1 written as CANCELED (cancelled meanwhile), 1 written as SYSTEM_FAILURE, 1 back to retrying "
        "(database error), 1 released unchanged (Postgres unreachable), 2 dead-lettered: a | b | c (and other "
        "reasons: see the StuckEntry rows), 1 already handled."
    )


# ------------------------------------------------- each outcome reported on its own; exactly what was selected


@pytest.fixture
def mixed(buffer, accept):
    """Three dead letters of one env whose outcomes differ under a repair: one whose env is then deleted (no
    row can be written for it), one already drained (acked), one that can be repaired."""
    gone, live = EnvironmentFactory(slug="gone"), EnvironmentFactory(slug="live")
    now = to_ms(timezone.now())
    rows = {}
    for name, env in (("orphan", gone), ("acked", live), ("fine", live)):
        (run_id,) = accept(env, now_ms=now - 600_000)
        shard = buffer.shard_for(env.org_id)
        buffer.lease(shard, org_id=env.org_id, env_id=env.id, n=1, now_ms=now, lease_ms=60_000)
        if name == "acked":
            buffer.ack(shard, [run_id], now_ms=now, grace_ms=600_000)
        else:
            buffer.dead_letter(shard, run_id, now_ms=now, reason="environment gone")
        rows[name] = stuck(env, run_id, StuckKind.DEAD, error="environment gone")
    gone.delete()
    return rows


@pytest.mark.django_db(transaction=True)
def test_fail_on_a_mix_reports_each_outcome_and_never_a_change_it_did_not_make(repairer_client, buffer, mixed):
    response = act(repairer_client, "fail_entries", *mixed.values())

    (message,) = messages_of(response)
    assert message.startswith("Fail: 1 failed, 1 dead-lettered: failed by an operator; "), message
    assert message.endswith(", 1 already handled."), message
    orphan = buffer.get(mixed["orphan"].run_id, org_id=mixed["orphan"].org_id)
    assert orphan is not None and orphan.status == "DEAD"  # still dead, and said so
    assert not TaskRun.objects.filter(id=mixed["orphan"].run_id).exists()
    assert TaskRun.objects.get(id=mixed["fine"].run_id).status == RunStatus.SYSTEM_FAILURE


@pytest.mark.django_db(transaction=True)
def test_materialise_and_cancel_on_a_mix_report_each_outcome(repairer_client, buffer, mixed):
    (message,) = messages_of(act(repairer_client, "materialise_now", mixed["orphan"], mixed["fine"]))
    assert message.startswith("Materialise now: 1 materialised, 1 dead-lettered: "), message
    assert message.endswith(", 0 already handled."), message

    (message,) = messages_of(act(repairer_client, "cancel_runs", *mixed.values()))
    # The orphan is dead again and cancellable (flagged), but its CANCELED row cannot be written either.
    assert message.startswith("Cancel: 0 cancelled, 1 dead-lettered: "), message
    assert message.endswith(", 2 already handled."), message


@pytest.mark.django_db(transaction=True)
def test_redrive_of_one_selected_entry_touches_exactly_that_one(repairer_client, buffer, accept):
    env = EnvironmentFactory()
    now = to_ms(timezone.now())
    ids = accept(env, 3, now_ms=now - 600_000)
    shard = buffer.shard_for(env.org_id)
    buffer.lease(shard, org_id=env.org_id, env_id=env.id, n=3, now_ms=now, lease_ms=60_000)
    for run_id in ids:
        buffer.dead_letter(shard, run_id, now_ms=now, reason="environment gone")
    picked = stuck(env, ids[0], StuckKind.DEAD)
    for run_id in ids[1:]:
        stuck(env, run_id, StuckKind.DEAD)

    (message,) = messages_of(act(repairer_client, "redrive_dead_letters", picked))

    assert message == "Re-drive: 1 re-driven, 0 already handled."
    assert [buffer.get(r, org_id=env.org_id).status for r in ids] == ["QUEUED", "DEAD", "DEAD"]
    (message,) = messages_of(act(repairer_client, "redrive_dead_letters", picked))
    assert message == "Re-drive: 0 re-driven, 1 already handled."


@pytest.mark.django_db(transaction=True)
def test_the_whole_env_is_a_separate_explicit_action(repairer_client, buffer, accept):
    env = EnvironmentFactory()
    now = to_ms(timezone.now())
    ids = accept(env, 3, now_ms=now - 600_000)
    shard = buffer.shard_for(env.org_id)
    buffer.lease(shard, org_id=env.org_id, env_id=env.id, n=3, now_ms=now, lease_ms=60_000)
    for run_id in ids:
        buffer.dead_letter(shard, run_id, now_ms=now, reason="environment gone")

    (message,) = messages_of(act(repairer_client, "redrive_whole_envs", stuck(env, ids[0], StuckKind.DEAD)))

    assert message == f"Re-drive every dead letter of env {env.id}: 3 re-driven, 0 already handled."
    assert [buffer.get(r, org_id=env.org_id).status for r in ids] == ["QUEUED"] * 3
