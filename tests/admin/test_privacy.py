"""Privacy by permission on the operator screens (docs/operations.md#admin-permissions): the buffer pages need
``sweep.view_buffer``; the tenants' payloads, metadata and error texts need ``sweep.view_buffer_payloads``, and
everyone else sees sizes and a redacted form."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from mollifier_project.clock import to_ms
from sweep.models import StuckEntry, StuckKind
from tests.factories import EnvironmentFactory

pytestmark = pytest.mark.django_db

SECRET = "tenant-secret-<b>4242</b>"  # also checks escaping: the tag must never reach the page raw
SECRET_ESCAPED = "tenant-secret-&lt;b&gt;4242&lt;/b&gt;"
ERROR = f"payload rejected: {SECRET}"
VIEW = ("sweep.view_stuckentry", "sweep.view_buffer", "runs.view_taskrun")


def _client(username: str, *perms: str) -> Client:
    user = User.objects.create_user(username, password="pw", is_staff=True)
    for perm in perms:
        app, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app, codename=codename))
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def dead(buffer, accept):
    """A dead letter whose payload, metadata and error text carry the tenant's secret, and its StuckEntry row."""
    env = EnvironmentFactory(slug="private")
    (run_id,) = accept(
        env, now_ms=to_ms(timezone.now() - timedelta(minutes=10)),
        payload=f'{{"json":{{"secret":"{SECRET}"}}}}', metadata=f'{{"json":{{"note":"{SECRET}"}}}}',
    )  # fmt: skip
    shard = buffer.shard_for(env.org_id)
    now = to_ms(timezone.now())
    buffer.lease(shard, org_id=env.org_id, env_id=env.id, n=1, now_ms=now, lease_ms=60_000)
    buffer.dead_letter(shard, run_id, now_ms=now, reason=ERROR)
    row = StuckEntry.objects.create(
        run_id=run_id, org_id=env.org_id, env_id=env.id, shard=shard, kind=StuckKind.DEAD,
        accepted_at=timezone.now() - timedelta(minutes=10), first_seen_at=timezone.now(),
        last_seen_at=timezone.now(), attempts=1, last_error=ERROR,
    )  # fmt: skip
    return env, row


def pages(env, row: StuckEntry) -> list[str]:
    return [
        reverse("admin:sweep_stuckentry_changelist"),
        reverse("admin:sweep_stuckentry_change", args=[row.pk]),
        reverse("buffer_admin:env", args=[env.org_id, env.id]),
        reverse("admin:runs_taskrun_buffered", args=[row.run_id]),
    ]


def test_staff_without_the_view_permission_get_403_on_every_buffer_page(buffer, dead):
    env, _row = dead
    nobody = _client("nobody")
    shard = buffer.shard_for(env.org_id)
    for url in (
        reverse("buffer_admin:dashboard"),
        reverse("buffer_admin:shard", args=[shard]),
        reverse("buffer_admin:env", args=[env.org_id, env.id]),
    ):
        response = nobody.get(url)
        assert response.status_code == 403, url
        assert env.slug.encode() not in response.content, url
    # The stuck-entry permission alone does not open the dashboard either: it is a permission of its own.
    assert _client("lister", "sweep.view_stuckentry").get(reverse("buffer_admin:dashboard")).status_code == 403
    assert _client("viewer", "sweep.view_buffer").get(reverse("buffer_admin:dashboard")).status_code == 200


def test_read_only_staff_see_sizes_and_no_payload_metadata_or_error_text(dead):
    env, row = dead
    viewer = _client("viewer", *VIEW)
    for url in pages(env, row):
        response = viewer.get(url)
        assert response.status_code == 200, url
        html = response.content.decode()
        assert "tenant-secret" not in html, url
        assert "[redacted: " in html, url  # the size stands in for the text
    detail = viewer.get(reverse("admin:runs_taskrun_buffered", args=[row.run_id])).content.decode()
    assert f"[redacted: {len(ERROR.encode()):,} bytes]" in detail  # the error's size, exactly


def test_with_the_payload_permission_they_are_shown_escaped(dead):
    env, row = dead
    reader = _client("reader", *VIEW, "sweep.view_buffer_payloads")
    for url in pages(env, row):
        response = reader.get(url)
        assert response.status_code == 200, url
        html = response.content.decode()
        assert SECRET_ESCAPED in html or "tenant-secret-&lt;b&gt;4242&lt;/b" in html, url
        assert SECRET not in html, url  # never raw
        assert "[redacted: " not in html, url


def test_a_run_rows_payload_metadata_and_error_need_the_payload_permission():
    from django.contrib.admin.utils import quote

    from tests.factories import fail_run

    env = EnvironmentFactory(slug="rowed")
    run = fail_run(env, ERROR, payload=f'{{"json":{{"secret":"{SECRET}"}}}}', metadata={"json": {"note": SECRET}})
    url = reverse("admin:runs_taskrun_change", args=[quote(run.pk)])

    viewer = _client("viewer", *VIEW).get(url)
    assert viewer.status_code == 200
    assert "tenant-secret" not in viewer.content.decode()
    assert "[redacted: " in viewer.content.decode()

    reader = _client("reader", *VIEW, "sweep.view_buffer_payloads").get(url)
    html = reader.content.decode()
    assert reader.status_code == 200 and "tenant-secret-&lt;b&gt;" in html and SECRET not in html
