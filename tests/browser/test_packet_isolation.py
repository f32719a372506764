"""A tenant's packet opened by a logged-in superuser, in a real browser (Debian's Chromium, as in
``test_operator_screens``): the packet must never run as a page of the app's origin (docs/api.md#packets).

The attack of issue 16 finding 1: a tenant uploads a packet with ``Content-Type: text/html`` whose script reads
the admin's CSRF token and POSTs ``revoke_selected_keys`` for another tenant's API key; a superuser is sent the
presigned GET link and opens it. Served inline with the uploader's type, the script ran with the superuser's
session and the other tenant's key was revoked. Served as a download (``Content-Disposition: attachment``), as
``application/octet-stream``, under ``nosniff`` and a sandboxing CSP, nothing of it runs.

The ORM is used in the test's thread only; the browser runs in a thread of its own (the module docstring of
``test_operator_screens`` says why).
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import sync_playwright

from runs.models import ApiKey
from runs.tenants import ensure_tenant, env_for_secret, issue_api_key
from tests.browser.test_operator_screens import CHROMIUM, CHROMIUM_ARGS
from tests.live import Gunicorn

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

USERNAME, PASSWORD = "root", "correct-horse-battery"
# How long the page is given to act after it was opened: the script needs two same-origin requests (well under
# a second on this box); 5 s leaves room for a loaded 2-core machine, and the script says when it is done.
SCRIPT_GRACE_S = 5.0
MARKER = "packet-script-ran"

# The attacker's page: read the CSRF token from the API key list, POST the revoke action for the victim's key.
EVIL = """<!doctype html><html><body><h1>invoice</h1><script>
console.log("%(marker)s");
(async () => {
  const list = await fetch("/admin/runs/apikey/", {credentials: "include"}).then(r => r.text());
  const token = list.match(/name="csrfmiddlewaretoken" value="([^"]+)"/)[1];
  const form = new URLSearchParams({csrfmiddlewaretoken: token, action: "revoke_selected_keys",
                                    _selected_action: "%(victim)d", index: "0"});
  const done = await fetch("/admin/runs/apikey/", {method: "POST", body: form, credentials: "include"});
  console.log("%(marker)s: posted " + done.status);
})();
</script></body></html>"""


@dataclass
class Seen:
    """What happened in the browser after the superuser opened the link."""

    console: list[str] = field(default_factory=list)
    admin_posts: list[str] = field(default_factory=list)
    downloaded: bool = False
    navigation_error: str = ""


@pytest.fixture
def server(transactional_db, tmp_path) -> Iterator[Gunicorn]:
    live = Gunicorn({"PACKETS_ROOT": str(tmp_path / "packets")})
    yield live
    live.stop()


def test_an_html_packet_opened_by_a_superuser_runs_nothing_and_revokes_nothing(server):
    attacker = ensure_tenant("mallory", "prod")
    _, attacker_secret = issue_api_key(attacker.env)
    victim = ensure_tenant("victim", "prod")
    victim_key, victim_secret = issue_api_key(victim.env)
    User.objects.create_superuser(USERNAME, "root@example.com", PASSWORD)

    url = upload(server.url, attacker_secret, "evil/invoice.html", EVIL % {"marker": MARKER, "victim": victim_key.pk})

    with ThreadPoolExecutor(1) as pool:
        seen = pool.submit(open_as_superuser, server.url, url).result(timeout=90)

    print(f"\nbrowser: {seen}")
    victim_key.refresh_from_db()
    assert victim_key.revoked_at is None, f"the packet's script revoked the victim's key: {seen}"
    assert env_for_secret(victim_secret) == victim.env
    assert not [line for line in seen.console if MARKER in line], seen  # the script never ran
    assert seen.admin_posts == [], seen
    assert seen.downloaded, seen  # the browser treated it as a file to save, not a page
    assert ApiKey.objects.filter(revoked_at__isnull=False).count() == 0


def upload(base: str, secret: str, path: str, html: str) -> str:
    """The tenant's two steps over HTTP: ask for an upload URL, PUT the page there as text/html; returns the
    presigned GET URL it would send to a staff member."""

    def call(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> dict:
        request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    auth = {"Authorization": f"Bearer {secret}"}
    put_url = call("PUT", f"{base}/api/v2/packets/{path}", headers=auth)["presignedUrl"]
    call("PUT", put_url, html.encode(), {"Content-Type": "text/html"})
    return call("GET", f"{base}/api/v1/packets/{path}", headers=auth)["presignedUrl"]


def open_as_superuser(base: str, packet_url: str) -> Seen:
    seen = Seen()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(base_url=base, accept_downloads=True)
            context.set_default_timeout(10_000)
            page = context.new_page()
            page.goto("/admin/login/")
            page.fill("#id_username", USERNAME)
            page.fill("#id_password", PASSWORD)
            page.click("input[type=submit]")
            page.wait_for_url(f"{base}/admin/")

            page.on("console", lambda message: seen.console.append(message.text))
            page.on("download", lambda _download: setattr(seen, "downloaded", True))
            context.on(
                "request",
                lambda r: seen.admin_posts.append(r.url) if r.method == "POST" and "/admin/" in r.url else None,
            )
            try:
                page.goto(packet_url)
            except PlaywrightError as exc:  # "Download is starting": the navigation became a download
                seen.navigation_error = str(exc).splitlines()[0]
            deadline = time.monotonic() + SCRIPT_GRACE_S
            while time.monotonic() < deadline and not any("posted" in line for line in seen.console):
                page.wait_for_timeout(100)
        finally:
            browser.close()
    return seen
