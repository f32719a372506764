"""Runs that exist only in Redis, in the TaskRun admin (``runs.admin.buffered``): found by the search, shown
read-only."""

from __future__ import annotations

import pytest
from django.contrib.admin.utils import quote
from django.urls import reverse

from runs.ids import new_run_id
from runs.models import TaskRun
from tests.factories import EnvironmentFactory, trigger_run

pytestmark = pytest.mark.django_db

LIST = reverse("admin:runs_taskrun_changelist")


def page(run_id: str) -> str:
    return reverse("admin:runs_taskrun_buffered", args=[run_id])


def test_a_buffered_only_run_is_found_by_the_search(admin_client, buffer, accept):
    env = EnvironmentFactory()
    (run_id,) = accept(env)

    response = admin_client.get(LIST, {"q": run_id})

    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == []  # no row yet
    assert response.context["buffered_match"].run_id == run_id
    html = response.content.decode()
    assert 'id="buffered-match"' in html and page(run_id) in html and "QUEUED" in html


def test_a_run_with_a_row_is_listed_as_usual_and_not_looked_up(admin_client, buffer, redis_counter):
    run = trigger_run(EnvironmentFactory())

    redis_counter.reset()
    response = admin_client.get(LIST, {"q": run.id})

    assert [r.id for r in response.context["cl"].result_list] == [run.id]
    assert "buffered_match" not in response.context
    assert redis_counter.commands == 0


def test_a_run_id_found_nowhere_says_so(admin_client, buffer):
    response = admin_client.get(LIST, {"q": new_run_id()})

    assert 'id="buffered-none"' in response.content.decode()


def test_terms_that_are_not_run_ids_never_reach_redis(admin_client, buffer, redis_counter):
    redis_counter.reset()
    admin_client.get(LIST, {"q": "some-tag"})

    assert redis_counter.commands == 0


def test_the_buffered_run_page_shows_snapshot_status_attempts_lease_cancel_and_tags(admin_client, buffer, accept):
    env = EnvironmentFactory()
    (run_id,) = accept(env, tags=["alpha"])
    shard = buffer.shard_for(env.org_id)
    buffer.append_tags(run_id, org_id=env.org_id, env_id=env.id, tags=["late-tag"], max_tags=10)
    buffer.lease(shard, org_id=env.org_id, env_id=env.id, n=1, now_ms=1_800_000_000_000, lease_ms=60_000)
    buffer.cancel(run_id, org_id=env.org_id, env_id=env.id, now_ms=1_800_000_000_500, reason="operator said so")

    response = admin_client.get(page(run_id))

    assert response.status_code == 200
    html = response.content.decode()
    assert response.context["entry"].status == "LEASED"
    assert response.context["api_status"] == "CANCELED"
    assert "leased until" in html
    assert "operator said so" in html
    assert "late-tag" in html
    assert "&quot;task&quot;: &quot;hello-world&quot;" in html  # the pretty-printed snapshot
    assert str(env) in html
    assert reverse("buffer_admin:env", args=[env.org_id, env.id]) in html


def test_a_dead_letter_reads_system_failure_as_the_api_would_say(admin_client, buffer, accept):
    env = EnvironmentFactory()
    (run_id,) = accept(env)
    shard = buffer.shard_for(env.org_id)
    buffer.lease(shard, org_id=env.org_id, env_id=env.id, n=1, now_ms=1, lease_ms=60_000)
    buffer.dead_letter(shard, run_id, now_ms=2, reason="no env")

    response = admin_client.get(page(run_id))

    assert (response.context["entry"].status, response.context["api_status"]) == ("DEAD", "SYSTEM_FAILURE")


def test_a_run_that_is_nowhere_is_404_and_one_with_a_row_links_to_it(admin_client, buffer):
    run = trigger_run(EnvironmentFactory())

    assert admin_client.get(page(new_run_id())).status_code == 404
    response = admin_client.get(page(run.id))
    assert response.status_code == 200
    assert reverse("admin:runs_taskrun_change", args=[quote(run.id)]) in response.content.decode()


def test_the_buffered_run_page_needs_the_run_view_permission(client, viewer_client, repairer_client, buffer, accept):
    (run_id,) = accept(EnvironmentFactory())

    assert viewer_client.get(page(run_id)).status_code == 200
    assert repairer_client.get(page(run_id)).status_code == 403  # staff without runs.view_taskrun
    assert client.get(page(run_id)).status_code == 302  # anonymous: to the login


def test_the_buffered_page_does_not_shadow_the_row_change_pages(admin_client, buffer):
    run = trigger_run(EnvironmentFactory())

    assert admin_client.get(reverse("admin:runs_taskrun_change", args=[quote(run.id)])).status_code == 200
    assert TaskRun.objects.filter(id=run.id).exists()
