"""The operator admin (docs/architecture.md#operator-admin) through the Django test client, against real Postgres."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from django.contrib.admin.utils import quote
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from runs.admin.model_admins import CappedCountPaginator
from runs.alerts import record_run_alert
from runs.models import ApiKey, BatchTaskRun, Environment, Organization, RunAlert, RunStatus, TaskRun
from runs.tenants import env_for_secret, issue_api_key, revoke_keys
from tests.factories import BatchFactory, EnvironmentFactory, OrganizationFactory, fail_run, trigger_run

pytestmark = pytest.mark.django_db


@dataclass
class World:
    org_a: Organization
    org_b: Organization
    env_a: Environment
    env_b: Environment
    pending: TaskRun  # org A, direct, tag "alpha", key "idem-a"
    buffered: TaskRun  # org A, buffered, tag "alphabet", key "idem-b"
    failed: TaskRun  # org B, SYSTEM_FAILURE (direct), tag "beta"
    batch: BatchTaskRun
    alert: RunAlert
    key: ApiKey
    secret: str


@pytest.fixture
def world() -> World:
    org_a = OrganizationFactory(slug="acme")
    org_b = OrganizationFactory(slug="globex", feature_flags={"mollifier": "false"})
    env_a = EnvironmentFactory(org=org_a, slug="prod", type=Environment.Type.PRODUCTION)
    env_b = EnvironmentFactory(org=org_b, slug="dev")
    pending = trigger_run(env_a, tags=["alpha"], idempotency_key="idem-a", idempotency_key_user="user-key-a")
    buffered = trigger_run(env_a, buffered=True, tags=["alphabet"], idempotency_key="idem-b")
    failed = fail_run(env_b, "exploded", buffered=False, tags=["beta"])
    record_run_alert(failed.id)
    batch = BatchFactory(env=env_a)
    key, secret = issue_api_key(env_a)
    return World(
        org_a, org_b, env_a, env_b, pending, buffered, failed, batch, RunAlert.objects.get(run=failed), key, secret
    )


def changelist(model: type) -> str:
    return reverse(f"admin:runs_{model._meta.model_name}_changelist")


def change_page(obj: object) -> str:
    return reverse(f"admin:runs_{obj._meta.model_name}_change", args=[quote(obj.pk)])


def listed_ids(response) -> set[str]:
    assert response.status_code == 200, response
    return {obj.pk for obj in response.context["cl"].result_list}


# ------------------------------------------------------------------------------------------ rendering


@pytest.mark.parametrize("model", [Organization, Environment, ApiKey, TaskRun, BatchTaskRun, RunAlert])
def test_every_changelist_renders_with_data(admin_client, world, model):
    response = admin_client.get(changelist(model))

    assert response.status_code == 200
    assert len(response.context["cl"].result_list) >= 1


@pytest.mark.parametrize("attr", ["org_a", "org_b", "env_a", "key", "pending", "buffered", "failed", "batch", "alert"])
def test_every_change_page_renders(admin_client, world, attr):
    obj = getattr(world, attr)

    response = admin_client.get(change_page(obj))

    assert response.status_code == 200
    assert str(obj.pk) in response.content.decode()


def test_admin_index_lists_the_runs_app(admin_client, world):
    response = admin_client.get(reverse("admin:index"))

    assert response.status_code == 200
    assert changelist(TaskRun) in response.content.decode()


def test_organization_list_shows_enrolment_and_env_count(admin_client, world):
    EnvironmentFactory(org=world.org_a, slug="staging")

    response = admin_client.get(changelist(Organization))

    rows = {org.slug: org for org in response.context["cl"].result_list}
    assert rows["acme"].env_count == 2
    assert rows["globex"].env_count == 1
    admin = response.context["cl"].model_admin
    assert admin.enrolled(rows["acme"]) is True
    assert admin.enrolled(rows["globex"]) is False  # the string "false" does not enrol
    html = response.content.decode()
    assert 'alt="True"' in html
    assert 'alt="False"' in html


def test_environment_page_shows_its_keys_by_prefix(admin_client, world):
    response = admin_client.get(change_page(world.env_a))

    html = response.content.decode()
    assert world.key.prefix in html
    assert world.secret not in html


def test_run_change_page_shows_dwell(admin_client, world):
    run = world.buffered
    expected = f"{(run.materialised_at - run.created_at).total_seconds():.3f} s"

    response = admin_client.get(change_page(run))

    assert expected in response.content.decode()


def test_batch_page_links_to_its_runs(admin_client, world):
    child = trigger_run(world.env_a, batch_id=world.batch.id, batch_index=0)
    link = f"{changelist(TaskRun)}?batch__id__exact={world.batch.id}"

    page = admin_client.get(change_page(world.batch)).content.decode()
    response = admin_client.get(link)

    assert link in page
    assert listed_ids(response) == {child.id}


# ------------------------------------------------------------------------------------ run search


@pytest.mark.parametrize(
    ("term", "expected"),
    [
        ("{pending.id}", "pending"),
        ("{failed.id}", "failed"),
        ("alpha", "pending"),  # exact tag: "alphabet" does not match
        ("alphabet", "buffered"),
        ("beta", "failed"),
        ("idem-a", "pending"),
        ("idem-b", "buffered"),
        ("user-key-a", "pending"),  # the idempotency key as the user gave it
    ],
)
def test_run_search_finds_exactly_the_matching_run(admin_client, world, term, expected):
    response = admin_client.get(changelist(TaskRun), {"q": term.format(pending=world.pending, failed=world.failed)})

    assert listed_ids(response) == {getattr(world, expected).id}


def test_run_search_with_no_match_finds_nothing(admin_client, world):
    assert listed_ids(admin_client.get(changelist(TaskRun), {"q": "alp"})) == set()


def test_run_search_ignores_surrounding_whitespace(admin_client, world):
    assert listed_ids(admin_client.get(changelist(TaskRun), {"q": f"  {world.pending.id} "})) == {world.pending.id}


# ----------------------------------------------------------------------------------- run filters


def test_run_filters_by_status_org_env_and_buffered(admin_client, world):
    url = changelist(TaskRun)

    assert listed_ids(admin_client.get(url, {"status__exact": RunStatus.SYSTEM_FAILURE})) == {world.failed.id}
    assert listed_ids(admin_client.get(url, {"status__exact": RunStatus.PENDING})) == {
        world.pending.id,
        world.buffered.id,
    }
    assert listed_ids(admin_client.get(url, {"org__id__exact": world.org_a.id})) == {
        world.pending.id,
        world.buffered.id,
    }
    assert listed_ids(admin_client.get(url, {"env__id__exact": world.env_b.id})) == {world.failed.id}
    assert listed_ids(admin_client.get(url, {"buffered__exact": "1"})) == {world.buffered.id}
    assert listed_ids(admin_client.get(url, {"buffered__exact": "0"})) == {world.pending.id, world.failed.id}


def test_run_filters_combine_with_search(admin_client, world):
    response = admin_client.get(changelist(TaskRun), {"q": "alpha", "buffered__exact": "1"})

    assert listed_ids(response) == set()


def test_run_list_queries_do_not_grow_with_rows(admin_client, world):
    url = changelist(TaskRun)
    admin_client.get(url)  # warm session/content-type caches
    with CaptureQueriesContext(connection) as few:
        admin_client.get(url)
    for i in range(10):
        trigger_run(EnvironmentFactory(), tags=[f"t{i}"])
    with CaptureQueriesContext(connection) as many:
        response = admin_client.get(url)

    assert len(response.context["cl"].result_list) == 13
    assert len(many) == len(few), [q["sql"] for q in many]


# ---------------------------------------------------------------------------------- run read-only


def test_runs_cannot_be_added_changed_or_deleted(admin_client, world):
    run = world.pending

    assert admin_client.get(reverse("admin:runs_taskrun_add")).status_code == 403
    assert admin_client.post(change_page(run), {"status": RunStatus.CANCELED}).status_code == 403
    assert admin_client.post(reverse("admin:runs_taskrun_delete", args=[quote(run.pk)])).status_code == 403
    run.refresh_from_db()
    assert run.status == RunStatus.PENDING


@pytest.mark.parametrize("model", [BatchTaskRun, RunAlert, ApiKey])
def test_system_written_rows_have_no_add_page(admin_client, world, model):
    assert admin_client.get(reverse(f"admin:runs_{model._meta.model_name}_add")).status_code == 403


def test_run_list_counts_at_most_the_cap():
    paginator = CappedCountPaginator(TaskRun.objects.order_by("-id"), 10)
    paginator.cap = 2
    env = EnvironmentFactory()
    for _ in range(4):
        trigger_run(env)

    assert paginator.count == 3
    assert paginator.capped


def test_capped_run_list_says_more_than(admin_client, world, monkeypatch):
    monkeypatch.setattr(CappedCountPaginator, "cap", 2)

    html = admin_client.get(changelist(TaskRun)).content.decode()

    assert "More than 2 task runs" in html


# --------------------------------------------------------------------------------------- API keys


def test_api_key_pages_show_the_prefix_never_the_secret(admin_client, world):
    pages = [
        admin_client.get(changelist(ApiKey)).content.decode(),
        admin_client.get(change_page(world.key)).content.decode(),
    ]

    for html in pages:
        assert world.key.prefix in html
        assert world.secret not in html
        assert world.secret[len(world.key.prefix) :] not in html


def test_revoke_action_revokes_and_reports_the_count(admin_client, world):
    second, second_secret = issue_api_key(world.env_a)
    already, _ = issue_api_key(world.env_b)
    revoked_at = datetime(2024, 1, 1, tzinfo=UTC)
    revoke_keys([already.pk], revoked_at)
    _, untouched_secret = issue_api_key(world.env_b)

    response = admin_client.post(
        changelist(ApiKey),
        {"action": "revoke_selected_keys", "_selected_action": [world.key.pk, second.pk, already.pk]},
        follow=True,
    )

    assert response.status_code == 200
    assert [str(m) for m in response.context["messages"]] == ["Revoked 2 API keys; 1 was already revoked."]
    assert env_for_secret(world.secret) is None
    assert env_for_secret(second_secret) is None
    assert env_for_secret(untouched_secret) == world.env_b
    already.refresh_from_db()
    assert already.revoked_at == revoked_at  # the first revocation is kept


def test_revoke_keys_counts_only_keys_it_revoked(world):
    now = datetime(2025, 6, 1, tzinfo=UTC)

    assert revoke_keys([world.key.pk], now) == 1
    assert revoke_keys(ApiKey.objects.filter(pk=world.key.pk), now) == 0
    world.key.refresh_from_db()
    assert world.key.revoked_at == now


def test_admin_static_files_are_served_by_the_app_itself(client):
    """gunicorn serves the admin's CSS too (WhiteNoise), so the admin is styled under `make up`."""
    response = client.get("/static/admin/css/base.css")
    assert response.status_code == 200
    assert b"body" in b"".join(response.streaming_content)
