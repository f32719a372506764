"""Ask first, and an audit trail (``sweep.admin.stuck_entries``, ``sweep.audit``, ``runs.admin.deletion``): every
StuckEntry repair shows a confirmation page (count, scope, an optional reason) and changes nothing until
confirmed; a confirmed one is recorded (an ``OperatorAction`` row, a ``LogEntry`` per row, a log line naming the
user); staff without the repair permission get 403 on every POST. Real Redis and Postgres."""

from __future__ import annotations

import logging

import pytest
from django.contrib.admin.models import LogEntry
from django.urls import reverse

from runs.models import RunStatus, TaskRun
from sweep.models import OperatorAction
from tests.admin.test_stuck_entries import ACTIONS, LIST, act, messages_of

pytestmark = pytest.mark.django_db

AUDIT_LIST = reverse("admin:sweep_operatoraction_changelist")


def ask(client, action: str, *rows_):
    """The first POST of an action, as the changelist's form sends it: no ``confirm``."""
    return client.post(LIST, {"action": action, "_selected_action": [r.pk for r in rows_]})


def buffer_state(buffer, rows):
    return {k: (e.status, e.attempts) for k in ("stale", "dead", "expired")
            for e in [buffer.get(rows[k].run_id, org_id=rows[k].org_id)]}  # fmt: skip


@pytest.mark.parametrize("action", ACTIONS)
def test_every_action_asks_first_with_count_and_scope_and_changes_nothing(repairer_client, buffer, rows, action):
    before = buffer_state(buffer, rows)

    response = ask(repairer_client, action, rows["stale"], rows["dead"])

    assert response.status_code == 200
    assert response.templates[0].name == "admin/sweep/stuckentry/confirm_action.html"
    html = response.content.decode()
    env_a, _ = rows["envs"]
    assert "<strong>2</strong> selected entries" in html
    assert f"{env_a.org.slug}/alpha ({env_a.id})" in html  # the scope, by name
    assert rows["stale"].run_id in html and rows["dead"].run_id in html
    assert 'name="reason"' in html and 'name="confirm" value="yes"' in html
    assert buffer_state(buffer, rows) == before
    assert OperatorAction.objects.count() == 0 and LogEntry.objects.count() == 0


def test_the_scope_on_the_confirmation_page_is_escaped(repairer_client, buffer, rows):
    env_a, _ = rows["envs"]
    env_a.slug = "<b>alpha</b>"
    env_a.save()

    html = ask(repairer_client, "fail_entries", rows["dead"]).content.decode()

    assert "&lt;b&gt;alpha&lt;/b&gt;" in html and "<b>alpha</b>" not in html


@pytest.mark.django_db(transaction=True)
def test_a_confirmed_action_changes_and_is_recorded_with_reason_and_counts(repairer_client, rows, caplog):
    with caplog.at_level(logging.INFO, logger="sweep.audit"):
        response = act(repairer_client, "fail_entries", rows["dead"], reason="env gone for good, INC-42")

    assert messages_of(response) == ["Fail: 1 failed, 0 already handled."]
    assert TaskRun.objects.get(id=rows["dead"].run_id).status == RunStatus.SYSTEM_FAILURE
    (row,) = OperatorAction.objects.all()
    env_a, _ = rows["envs"]
    assert (row.user, row.source, row.action, row.reason) == ("repairer", "admin", "Fail", "env gone for good, INC-42")
    assert (row.org_ids, row.env_ids, row.run_ids, row.run_count) == (
        [env_a.org_id],
        [env_a.id],
        [rows["dead"].run_id],
        1,
    )
    assert row.counts["changed"] == 1 and row.counts["already_handled"] == 0
    assert row.outcome == "1 failed, 0 already handled"
    assert row.scope == f"{env_a.org.slug}/alpha ({env_a.id})"
    (entry,) = LogEntry.objects.all()
    assert entry.object_id == str(rows["dead"].pk) and entry.user.username == "repairer"
    assert "INC-42" in entry.get_change_message()
    (line,) = [r for r in caplog.records if r.name == "sweep.audit"]
    assert "repairer" in line.getMessage() and line.user == "repairer" and line.reason == "env gone for good, INC-42"


ACTION_NAMES = {
    "requeue_now": "Requeue now", "redrive_dead_letters": "Re-drive",
    "redrive_whole_envs": "Re-drive every dead letter of the env", "materialise_now": "Materialise now",
    "fail_entries": "Fail", "cancel_runs": "Cancel",
}  # fmt: skip


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("action", ACTIONS)
def test_every_confirmed_action_kind_leaves_an_audit_row_and_a_log_line(repairer_client, rows, action, caplog):
    with caplog.at_level(logging.INFO, logger="sweep.audit"):
        act(repairer_client, action, rows["dead"])

    (row,) = OperatorAction.objects.all()
    assert (row.action, row.user, row.source) == (ACTION_NAMES[action], "repairer", "admin")
    assert row.env_ids == [rows["dead"].env_id] and row.outcome
    assert LogEntry.objects.filter(object_id=str(rows["dead"].pk)).count() == 1
    lines = [r for r in caplog.records if r.name == "sweep.audit"]
    assert len(lines) == 1 and lines[0].user == "repairer" and lines[0].action == ACTION_NAMES[action]


@pytest.mark.parametrize("action", ACTIONS)
def test_read_only_staff_get_403_on_every_post_asked_or_confirmed(viewer_client, buffer, rows, action):
    before = buffer_state(buffer, rows)

    assert ask(viewer_client, action, rows["dead"]).status_code == 403
    assert act(viewer_client, action, rows["dead"]).status_code == 403
    assert buffer_state(buffer, rows) == before and OperatorAction.objects.count() == 0


def test_the_audit_list_is_read_only_searchable_and_filterable(admin_client, viewer_client, rows):
    from sweep import audit

    audit.record(user="alice", action="Fail", source="admin", scope=audit.Scope.of([rows["dead"]]),
                 counts={"changed": 1}, reason="INC-7")  # fmt: skip
    audit.record(user="bob", action="pause", source="cli", scope=audit.Scope(org_ids=(rows["dead"].org_id,)),
                 counts={"changed": 1})  # fmt: skip

    def users(response):
        assert response.status_code == 200
        return [a.user for a in response.context["cl"].result_list]

    assert users(admin_client.get(AUDIT_LIST)) == ["bob", "alice"]
    assert users(admin_client.get(AUDIT_LIST, {"q": "INC-7"})) == ["alice"]
    assert users(admin_client.get(AUDIT_LIST, {"q": rows["dead"].run_id})) == ["alice"]
    assert users(admin_client.get(AUDIT_LIST, {"action": "pause"})) == ["bob"]
    assert users(admin_client.get(AUDIT_LIST, {"user": "alice"})) == ["alice"]
    pk = OperatorAction.objects.get(user="alice").pk
    assert admin_client.get(reverse("admin:sweep_operatoraction_add")).status_code == 403
    assert (
        admin_client.post(reverse("admin:sweep_operatoraction_delete", args=[pk]), {"post": "yes"}).status_code == 403
    )
    assert OperatorAction.objects.count() == 2
    assert viewer_client.get(AUDIT_LIST).status_code == 403  # no view_operatoraction


def test_the_env_page_links_the_envs_audit_trail(admin_client, rows):
    from sweep import audit

    env_a, env_b = rows["envs"]
    audit.record(user="alice", action="pause", source="cli", scope=audit.Scope(org_ids=(env_a.org_id,),
                 env_ids=(env_a.id,)), counts={"changed": 1})  # fmt: skip
    audit.record(user="bob", action="pause", source="cli", scope=audit.Scope(org_ids=(env_b.org_id,),
                 env_ids=(env_b.id,)), counts={"changed": 1})  # fmt: skip

    html = admin_client.get(reverse("buffer_admin:env", args=[env_a.org_id, env_a.id])).content.decode()
    link = f"{AUDIT_LIST}?env_id={env_a.id}"

    assert f'href="{link}"' in html
    response = admin_client.get(link)
    assert [a.user for a in response.context["cl"].result_list] == ["alice"]


@pytest.mark.slow  # 1,001 rows and a requeue over them: a few seconds
def test_select_all_across_pages_confirms_without_one_field_per_row(repairer_client, buffer):
    """More rows than DATA_UPLOAD_MAX_NUMBER_FIELDS (1,000) selected with "select all": the confirmation form
    must not carry a hidden field per row, or its POST is refused (400)."""
    from django.utils import timezone

    from sweep.models import StuckEntry, StuckKind
    from tests.factories import EnvironmentFactory

    env, now = EnvironmentFactory(), timezone.now()
    StuckEntry.objects.bulk_create(
        StuckEntry(run_id=f"run_many{i:05d}", org_id=env.org_id, env_id=env.id, shard=0, kind=StuckKind.STALE,
                   accepted_at=now, first_seen_at=now, last_seen_at=now)
        for i in range(1001)
    )  # fmt: skip
    first_page = list(StuckEntry.objects.order_by("accepted_at", "run_id").values_list("pk", flat=True)[:100])

    asked = repairer_client.post(
        f"{LIST}?env_id={env.id}", {"action": "requeue_now", "select_across": "1", "_selected_action": first_page}
    )
    assert asked.status_code == 200 and "<strong>1001</strong> selected entries" in asked.content.decode()
    data = {"action": "requeue_now", "confirm": "yes", "reason": "all of them",
            "select_across": asked.context.get("select_across", "0"), "_selected_action": asked.context["selected"]}  # fmt: skip
    done = repairer_client.post(f"{LIST}?env_id={env.id}", data, follow=True)

    assert done.status_code == 200
    assert messages_of(done) == ["Requeue now: 0 requeued, 1001 already handled."]
    assert OperatorAction.objects.get().run_count == 1001
