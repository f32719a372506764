"""Nothing lost from the admin (``runs.admin.deletion``): deleting an org or env with buffered runs warns with
the count, and dead-letters them once the deletion commits."""

from __future__ import annotations

import pytest
from django.urls import reverse

from runs.models import Environment, Organization
from tests.admin.conftest import NOW
from tests.buffer.invariants import assert_consistent
from tests.factories import EnvironmentFactory, OrganizationFactory

pytestmark = pytest.mark.django_db


def delete_url(obj) -> str:
    return reverse(f"admin:runs_{obj._meta.model_name}_delete", args=[obj.pk])


@pytest.fixture
def doomed(buffer, accept):
    """An org with two envs: one with 3 queued, 1 retrying and 1 leased entries, one with nothing; and an
    unrelated env with 2 queued."""
    org = OrganizationFactory(slug="doomed")
    busy, quiet = EnvironmentFactory(org=org, slug="busy"), EnvironmentFactory(org=org, slug="quiet")
    other = EnvironmentFactory(slug="bystander")
    shard = buffer.shard_for(org.id)
    ids = accept(busy, 5)
    buffer.lease(shard, org_id=org.id, env_id=busy.id, n=2, now_ms=NOW, lease_ms=60_000)
    buffer.requeue(shard, ids[0], now_ms=NOW, delay_ms=60_000, error="deadlock")
    others = accept(other, 2)
    return org, busy, quiet, other, ids, others


def test_the_env_delete_page_warns_with_the_count(admin_client, doomed):
    _, busy, quiet, *_ = doomed

    html = admin_client.get(delete_url(busy)).content.decode()

    assert "Warning: 5 buffered runs (3 queued, 1 retrying, 1 leased) will be dead-lettered" in html
    assert "Buffered runs (Redis), dead-lettered on delete: 5" in html
    assert "Warning" not in admin_client.get(delete_url(quiet)).content.decode()


def test_the_org_delete_page_counts_every_env_of_the_org(admin_client, doomed):
    org, *_ = doomed

    assert "Warning: 5 buffered runs" in admin_client.get(delete_url(org)).content.decode()


def test_the_delete_selected_confirmation_warns_too(admin_client, doomed):
    _, busy, quiet, *_ = doomed

    response = admin_client.post(
        reverse("admin:runs_environment_changelist"),
        {"action": "delete_selected", "_selected_action": [busy.pk, quiet.pk]},
    )

    assert "Warning: 5 buffered runs" in response.content.decode()


@pytest.mark.django_db(transaction=True)  # the admin's own transaction commits: on_commit runs inside the view
def test_deleting_an_env_dead_letters_its_entries_with_who_deleted_it(admin_client, buffer, doomed):
    org, busy, _, other, ids, others = doomed

    response = admin_client.post(delete_url(busy), {"post": "yes"}, follow=True)

    assert response.status_code == 200
    assert not Environment.objects.filter(pk=busy.pk).exists()
    for run_id in ids:
        entry = buffer.get(run_id, org_id=org.id)
        assert entry is not None and entry.status == "DEAD"
        assert entry.last_error == "environment doomed/busy deleted by admin"
    assert [buffer.get(r, org_id=other.org_id).status for r in others] == ["QUEUED", "QUEUED"]
    assert any("Dead-lettered 5 buffered runs" in str(m) for m in response.context["messages"])
    dashboard = admin_client.get("/admin/buffer/").context
    assert dashboard["totals"].dead == 5 and dashboard["totals"].waiting == 2  # they show as dead
    assert_consistent(buffer)


def test_deleting_an_org_dead_letters_the_entries_of_all_its_envs(
    admin_client, buffer, doomed, django_capture_on_commit_callbacks
):
    org, _, _, _, ids, _ = doomed

    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(delete_url(org), {"post": "yes"})

    assert not Organization.objects.filter(pk=org.pk).exists()
    assert {buffer.get(r, org_id=org.id).status for r in ids} == {"DEAD"}


def test_bulk_deletion_dead_letters_too(admin_client, buffer, doomed, django_capture_on_commit_callbacks):
    org, busy, quiet, _, ids, _ = doomed

    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(
            reverse("admin:runs_environment_changelist"),
            {"action": "delete_selected", "_selected_action": [busy.pk, quiet.pk], "post": "yes"},
        )

    assert not Environment.objects.filter(pk__in=[busy.pk, quiet.pk]).exists()
    assert {buffer.get(r, org_id=org.id).status for r in ids} == {"DEAD"}


def test_nothing_is_dead_lettered_before_the_deletion_commits(admin_client, buffer, doomed):
    org, busy, _, _, ids, _ = doomed

    admin_client.post(delete_url(busy), {"post": "yes"})  # the test's transaction never commits

    assert buffer.get(ids[-1], org_id=org.id).status == "QUEUED"


@pytest.mark.django_db(transaction=True)
def test_an_unreachable_redis_does_not_block_the_deletion_and_says_so(admin_client, doomed, settings):
    _, busy, *_ = doomed
    settings.REDIS_URL = "redis://127.0.0.1:1/0"

    assert "Redis is unreachable" in admin_client.get(delete_url(busy)).content.decode()
    response = admin_client.post(delete_url(busy), {"post": "yes"}, follow=True)

    assert not Environment.objects.filter(pk=busy.pk).exists()
    assert any("stay queued until the drain dead-letters them" in str(m) for m in response.context["messages"])
    from sweep.models import OperatorAction

    (row,) = OperatorAction.objects.all()  # recorded all the same, saying nothing was dead-lettered
    assert (row.action, row.user, row.counts) == ("delete envs", "admin", {"dead_lettered": 0, "redis_unreachable": 1})


@pytest.mark.django_db(transaction=True)
def test_deleting_an_env_with_buffered_runs_is_in_the_audit_trail(admin_client, buffer, doomed, caplog):
    from sweep.models import OperatorAction

    org, busy, *_ = doomed

    with caplog.at_level("INFO", logger="sweep.audit"):
        admin_client.post(delete_url(busy), {"post": "yes"}, follow=True)

    (row,) = OperatorAction.objects.all()
    assert (row.action, row.user, row.source) == ("delete envs", "admin", "admin")
    assert (row.org_ids, row.env_ids, row.scope) == ([org.id], [busy.id], f"doomed/busy ({busy.id})")
    assert row.counts == {"dead_lettered": 5}
    assert [r.user for r in caplog.records if r.name == "sweep.audit"] == ["admin"]
