"""The StuckEntry list as an operator first sees it (issue 18, item 7): open entries by default (a filter they
can clear), oldest first, and rows a repair dealt with resolved by that repair, not at the next sweep."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from sweep.models import StuckEntry
from tests.admin.conftest import stuck
from tests.admin.test_stuck_entries import LIST, act, listed, messages_of
from tests.factories import EnvironmentFactory

pytestmark = pytest.mark.django_db

# ``rows`` (tests/admin/conftest.py): three stuck entries in the buffer (stale, dead, expired lease) of two envs.


def test_the_default_list_shows_only_open_entries_oldest_first_and_the_filter_can_be_cleared(admin_client):
    env = EnvironmentFactory()
    young = stuck(env, "run_young", age=timedelta(minutes=6))
    old = stuck(env, "run_old", age=timedelta(hours=3))
    middle = stuck(env, "run_middle", age=timedelta(minutes=40))
    gone = stuck(env, "run_gone", age=timedelta(days=1))
    gone.resolved_at = timezone.now()
    gone.save()

    assert listed(admin_client.get(LIST)) == [old.run_id, middle.run_id, young.run_id]
    # "All" is a choice of its own (the stock "All" link would fall back to the default).
    everything = listed(admin_client.get(LIST, {"state": "all"}))
    assert everything == [gone.run_id, old.run_id, middle.run_id, young.run_id]
    assert listed(admin_client.get(LIST, {"state": "resolved"})) == [gone.run_id]
    page = admin_client.get(LIST).content.decode()
    assert "?state=all" in page  # the operator can clear the default from the filter panel


def test_a_long_error_is_cut_in_the_list_with_the_whole_text_in_its_title(admin_client):
    env = EnvironmentFactory()
    error = "duplicate key value violates unique constraint " + "x" * 200
    stuck(env, "run_long_error", error=error)
    html = admin_client.get(LIST).content.decode()
    assert f'title="{error}"' in html
    assert error[:39] + "…" in html


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("action", "keys"),
    [
        ("materialise_now", ("stale", "dead", "expired")),
        ("fail_entries", ("dead",)),
        ("cancel_runs", ("stale",)),
        ("redrive_dead_letters", ("dead",)),
        ("requeue_now", ("dead", "expired")),
    ],
)
def test_a_repaired_entry_is_resolved_at_once(repairer_client, rows, action, keys):
    response = act(repairer_client, action, *(rows[k] for k in keys))
    assert response.status_code == 200, messages_of(response)
    resolved = {r.run_id for r in StuckEntry.objects.filter(resolved_at__isnull=False)}
    assert resolved == {rows[k].run_id for k in keys}, messages_of(response)
    # Off the default list straight away; the untouched rows stay.
    untouched = [rows[k].run_id for k in ("expired", "stale", "dead") if k not in keys]
    assert listed(repairer_client.get(LIST)) == untouched


@pytest.mark.django_db(transaction=True)
def test_an_entry_a_repair_did_not_change_stays_open(repairer_client, rows):
    """Requeue of an entry that is queued already changes nothing: its row stays open."""
    messages = messages_of(act(repairer_client, "requeue_now", rows["stale"]))
    assert messages == ["Requeue now: 0 requeued, 1 already handled."]
    assert StuckEntry.objects.get(pk=rows["stale"].pk).resolved_at is None


def test_the_list_fits_a_1366px_window(admin_client, tmp_path):
    """Measured as the run list is (tests/ops/test_admin_screens.py: headless Chromium at 1366 × 768), with
    long realistic values and the "all" filter, so the open column shows: no horizontal scrolling."""
    from tests.chromium import measure_at_1366
    from tests.factories import OrganizationFactory

    env = EnvironmentFactory(org=OrganizationFactory(slug="acme-industries-europe"), slug="production-eu-west")
    for i in range(3):
        stuck(env, f"run_01m966q5eyzcqv1mz6nmdedr{i}", age=timedelta(hours=30 + i), attempts=12,
              error="InvalidRun: duplicate key value violates unique constraint \"runs_taskrun_pkey\" " * 3)  # fmt: skip
    html = admin_client.get(LIST, {"state": "all"}).content.decode()
    size = measure_at_1366(html, tmp_path)
    assert size["window"] == 1366
    assert size["results"] <= size["room"], size
    assert size["page"] <= size["window"], size
