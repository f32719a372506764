"""Small things on the operator admin (docs/operations.md#admin-screens): times with seconds and zone, a
run list that fits a 1366 px window, "Batches", and enrolment as a checkbox."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.contrib.admin.utils import quote
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from runs.admin.model_admins import TaskRunAdmin
from runs.models import BatchTaskRun, Organization, TaskRun
from tests.chromium import measure_at_1366
from tests.factories import BatchFactory, EnvironmentFactory, OrganizationFactory, fail_run, trigger_run

pytestmark = pytest.mark.django_db

STAMP = re.compile(r"\b\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC\b")


def shown(dt) -> str:
    return timezone.localtime(dt).strftime("%Y-%m-%d %H:%M:%S UTC")


# ------------------------------------------------------------------------------------------------ times


def test_run_list_and_page_show_times_with_seconds_and_zone(admin_client):
    run = trigger_run(EnvironmentFactory(), buffered=True)

    listing = admin_client.get(reverse("admin:runs_taskrun_changelist")).content.decode()
    page = admin_client.get(reverse("admin:runs_taskrun_change", args=[quote(run.pk)])).content.decode()

    assert shown(run.created_at) in listing
    assert shown(run.created_at) in page and shown(run.materialised_at) in page
    assert "a.m." not in listing + page and "p.m." not in listing + page


def test_other_admin_pages_use_the_same_format(admin_client):
    org = OrganizationFactory()

    listing = admin_client.get(reverse("admin:runs_organization_changelist")).content.decode()

    assert shown(org.created_at) in listing and STAMP.search(listing)


# -------------------------------------------------------------------------------------------- run list


def test_run_list_leaves_out_org_and_materialised_at():
    assert TaskRunAdmin.list_display == ("id", "task_identifier", "status", "env", "buffered", "created_at", "dwell")


def test_run_list_has_no_navigation_sidebar_and_other_lists_keep_it(admin_client):
    trigger_run(EnvironmentFactory())

    runs = admin_client.get(reverse("admin:runs_taskrun_changelist"))
    orgs = admin_client.get(reverse("admin:runs_organization_changelist"))

    assert runs.context["is_nav_sidebar_enabled"] is False and 'id="nav-sidebar"' not in runs.content.decode()
    assert orgs.context["is_nav_sidebar_enabled"] is True


def test_run_list_fits_a_1366px_window(admin_client, tmp_path):
    """Measured in a real browser (headless Chromium, 1366 × 768) with realistic long values: the table
    needs no horizontal scrolling, and neither does the page."""
    env = EnvironmentFactory(org=OrganizationFactory(slug="acme-industries"), slug="production")
    trigger_run(env, task_identifier="generate-monthly-report", buffered=True)
    fail_run(env, task_identifier="send-welcome-email-v2")
    html = admin_client.get(reverse("admin:runs_taskrun_changelist")).content.decode()
    size = measure_at_1366(html, tmp_path)
    assert size["window"] == 1366
    assert size["results"] <= size["room"], size  # the table fits beside the filters
    assert size["page"] <= size["window"], size


# ------------------------------------------------------------------------------------------------ batches


def test_admin_index_says_batches(admin_client):
    BatchFactory(env=EnvironmentFactory())

    html = admin_client.get(reverse("admin:index")).content.decode()

    assert "Batches" in html and "Batchs" not in html
    assert BatchTaskRun._meta.verbose_name_plural == "batches"


def test_models_and_migrations_agree():
    out = StringIO()
    call_command("makemigrations", "runs", "--check", "--dry-run", stdout=out)  # exits non-zero on a missing one
    assert "No changes detected" in out.getvalue()


# ----------------------------------------------------------------------------------------------- enrolment


def org_page(org: Organization) -> str:
    return reverse("admin:runs_organization_change", args=[org.pk])


def post(admin_client, org: Organization, *, enrolled: bool, **fields):
    data = {"slug": org.slug, "name": org.name, **fields}
    if enrolled:
        data["mollifier_enrolled"] = "on"
    response = admin_client.post(org_page(org), data)
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else response
    org.refresh_from_db()


def test_enrolment_is_a_checkbox_not_a_json_box(admin_client):
    org = OrganizationFactory(feature_flags={"mollifier": True})

    html = admin_client.get(org_page(org)).content.decode()

    assert re.search(r'<input type="checkbox" name="mollifier_enrolled"[^>]* checked', html)
    assert 'name="feature_flags"' not in html  # shown read-only, not edited as raw JSON


@pytest.mark.parametrize(
    ("flags", "checked"),
    [({"mollifier": True}, True), ({"mollifier": "true"}, False), ({}, False), (["mollifier"], False)],
)
def test_checkbox_shows_strict_enrolment(admin_client, flags, checked):
    org = OrganizationFactory(feature_flags=flags)

    form = admin_client.get(org_page(org)).context["adminform"].form

    assert form["mollifier_enrolled"].initial is checked


def test_ticking_enrols_with_json_true_and_keeps_other_flags(admin_client):
    org = OrganizationFactory(feature_flags={"mollifier": "false", "beta": 1})

    post(admin_client, org, enrolled=True)

    assert org.feature_flags == {"mollifier": True, "beta": 1}
    assert org.mollifier_enrolled


def test_unticking_writes_json_false(admin_client):
    org = OrganizationFactory(feature_flags={"mollifier": True, "beta": 1})

    post(admin_client, org, enrolled=False)

    assert org.feature_flags == {"mollifier": False, "beta": 1}
    assert not org.mollifier_enrolled


def test_saving_other_fields_leaves_the_flags_as_stored(admin_client):
    org = OrganizationFactory(feature_flags={"mollifier": "false", "beta": 1})

    post(admin_client, org, enrolled=False, name="Renamed")

    assert org.name == "Renamed"
    assert org.feature_flags == {"mollifier": "false", "beta": 1}


def test_adding_an_org_with_the_box_ticked_enrols_it(admin_client):
    response = admin_client.post(
        reverse("admin:runs_organization_add"), {"slug": "newco", "name": "NewCo", "mollifier_enrolled": "on"}
    )

    assert response.status_code == 302
    assert Organization.objects.get(slug="newco").feature_flags == {"mollifier": True}


def test_run_list_still_lists_runs_of_every_org(admin_client):
    runs = {trigger_run(EnvironmentFactory()).id for _ in range(3)}

    response = admin_client.get(reverse("admin:runs_taskrun_changelist"))

    assert {r.pk for r in response.context["cl"].result_list} == runs
    assert TaskRun.objects.count() == 3
