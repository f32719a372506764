"""The operator screens in a real browser: Debian's Chromium, driven headless by Playwright, against gunicorn
serving the test database (``tests.live``).

One walk an operator would take: log in, read the dashboard's verdict, drill down from the dashboard to the
shard and to the env holding dead letters, open a buffered run, select the env's stuck entries in the
StuckEntry admin, re-drive its dead letters, and see the dashboard's dead count drop to 0; then pause and resume
the whole org from its admin page. Every step asserts
what the page says; screenshots of each go to ``.data/screenshots/``.

Chromium comes from Debian (``scripts/provision.sh chromium``, run by ``make test``); Playwright never
downloads a browser of its own (no ``playwright install``): it launches ``/usr/bin/chromium``.

The browser runs in a thread of its own. Playwright's sync API keeps an asyncio loop running in the thread
that drives it, and Django refuses ORM calls from such a thread (``SynchronousOnlyOperation``); so the ORM is
used only in the test's own thread, before and after the walk, and the walk itself reads Redis only.
"""

from __future__ import annotations

import re
import shutil
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis as redis_lib
from django.conf import settings
from django.contrib.auth.models import Permission, User
from playwright.sync_api import Locator, Page, expect, sync_playwright

from buffer.buffer import Buffer
from buffer.values import AcceptStatus
from mollifier_project.clock import now_ms
from runs.snapshot import to_snapshot
from sweep import sweep
from sweep.models import StuckEntry, StuckKind
from tests.factories import EnvironmentFactory, OrganizationFactory, SnapshotFactory
from tests.live import ROOT, Gunicorn

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip
SCREENSHOTS = ROOT / ".data" / "screenshots"
SHARDS = 4
USERNAME, PASSWORD = "operator", "correct-horse-battery"
# What the operator may do: look at the buffer pages, stuck entries (payloads included), runs and tenants, and
# repair the buffer (not a superuser).
PERMISSIONS = (
    "sweep.view_stuckentry", "sweep.view_buffer", "sweep.view_buffer_payloads", "sweep.repair_buffer",
    "sweep.view_operatoraction", "runs.view_taskrun", "runs.view_environment", "runs.view_organization",
)  # fmt: skip
AGE_MS = 10 * 60_000  # the entries were accepted this long ago: older than STALE_THRESHOLD_S (300 s)
STEP_TIMEOUT_MS = 10_000


@dataclass(frozen=True)
class Scene:
    """What the walk expects to find."""

    url: str
    shard: int
    org_id: int
    env_id: int
    env_label: str  # "org/env", as the pages name the env
    queued_id: str  # the env's one queued entry
    dead_ids: tuple[str, ...]  # its dead letters


@pytest.fixture
def prefix() -> Iterator[str]:
    """The buffer's key prefix, shared by this process and gunicorn; every key under it goes afterwards."""
    prefix = f"mbrowser-{uuid.uuid4().hex[:10]}"
    yield prefix
    client = redis_lib.Redis.from_url(settings.REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def flags() -> dict[str, object]:
    return {"SHARDS": SHARDS, "ENABLED": True, "DRAINER_ENABLED": True, "STALE_SWEEP_ENABLED": True}


@pytest.fixture
def buffer(prefix, flags, mollifier_settings) -> Buffer:
    mollifier_settings(KEY_PREFIX=prefix, **flags)
    return Buffer.from_settings()


@pytest.fixture
def server(transactional_db, prefix, flags) -> Iterator[Gunicorn]:
    """Gunicorn with the same buffer settings; stopped before the test database is flushed."""
    env = {f"MOLLIFIER_{name}": str(value).lower() for name, value in flags.items()}
    live = Gunicorn({**env, "MOLLIFIER_KEY_PREFIX": prefix})
    yield live
    live.stop()


@pytest.fixture
def operator(transactional_db) -> User:
    user = User.objects.create_user(USERNAME, password=PASSWORD, is_staff=True)
    for perm in PERMISSIONS:
        app, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app, codename=codename))
    return user


@pytest.fixture
def stuck_env(buffer, server) -> Scene:
    """An env with three entries accepted 10 minutes ago: two leased and dead-lettered, one still queued;
    then one sweep pass of its shard, so the StuckEntry rows exist (2 dead, 1 stale)."""
    env = EnvironmentFactory(org=OrganizationFactory(slug="acme"), slug="stuck-prod")
    now = now_ms()
    ids = []
    for _ in range(3):
        s = SnapshotFactory(env=env)
        result = buffer.accept(
            run_id=s.id, env_id=env.id, org_id=env.org_id, snapshot=to_snapshot(s), now_ms=now - AGE_MS,
            idempotency=None, max_per_env=1_000_000,
        )  # fmt: skip
        assert result.status is AcceptStatus.ACCEPTED
        ids.append(s.id)
        now += 1
    shard = buffer.shard_for(env.org_id)
    leased = buffer.lease(shard, org_id=env.org_id, env_id=env.id, n=2, now_ms=now, lease_ms=60_000)
    assert sorted(e.run_id for e in leased) == sorted(ids[:2])
    for run_id in ids[:2]:
        buffer.dead_letter(shard, run_id, now_ms=now, reason="environment gone")

    report = sweep.sweep_shard(
        buffer, shard=shard, now_ms=now, limits=sweep.SweepLimits.from_settings(settings.MOLLIFIER)
    )

    assert report.newly_stuck == 3, report.summary()
    kinds = dict(StuckEntry.objects.filter(env_id=env.id).values_list("run_id", "kind"))
    assert kinds == {ids[0]: StuckKind.DEAD, ids[1]: StuckKind.DEAD, ids[2]: StuckKind.STALE}
    return Scene(server.url, shard, env.org_id, env.id, str(env), ids[2], (ids[0], ids[1]))


@pytest.fixture
def screenshots() -> Path:
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True)
    return SCREENSHOTS


def test_an_operator_redrives_a_stuck_envs_dead_letters_from_the_dashboard(operator, buffer, stuck_env, screenshots):
    scene = stuck_env
    started = time.monotonic()

    with ThreadPoolExecutor(1) as pool:  # the ORM stays in this thread (module docstring)
        shots = pool.submit(walk, scene, screenshots).result(timeout=90)

    elapsed = time.monotonic() - started
    for run_id in scene.dead_ids:
        entry = buffer.get(run_id, org_id=scene.org_id)
        assert entry is not None and (entry.status, entry.attempts) == ("QUEUED", 0)
    assert buffer.shard_stats_of(scene.shard, now_ms=now_ms()).dead == 0
    print(f"\nbrowser walk took {elapsed:.1f} s; screenshots:")
    for path in shots:
        assert path.stat().st_size > 0
        print(f"  {path}")


# ------------------------------------------------------------------------------------------- the walk


def walk(scene: Scene, into: Path) -> list[Path]:
    """The operator's clicks, in a browser of its own; returns the screenshots taken, in order."""
    shots: list[Path] = []

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1366, "height": 900}, base_url=scene.url)
            context.set_default_timeout(STEP_TIMEOUT_MS)
            expect.set_options(timeout=STEP_TIMEOUT_MS)
            page = context.new_page()

            def shoot(name: str) -> None:
                path = into / f"{name}.png"
                page.screenshot(path=str(path), full_page=True)
                shots.append(path)

            # 1. The dashboard sends an anonymous visitor to the login; log in there.
            page.goto("/admin/buffer/")
            expect(page).to_have_url(re.compile(r"/admin/login/\?next=/admin/buffer/$"))
            expect(page.locator("#login-form")).to_be_visible()
            page.fill("#id_username", USERNAME)
            page.fill("#id_password", "not-the-password")
            page.click("input[type=submit]")
            expect(page.locator("p.errornote")).to_contain_text("Please enter the correct username and password")
            page.fill("#id_username", USERNAME)
            page.fill("#id_password", PASSWORD)
            shoot("login")
            page.click("input[type=submit]")

            # 2. The dashboard: stuck (nothing drains), with the dead letters noted; the shard's row.
            expect(page).to_have_url(re.compile(r"/admin/buffer/$"))
            verdict = page.locator("#verdict")
            expect(verdict).to_have_class(re.compile(r"\bstuck\b"))
            expect(verdict.locator("strong")).to_have_text(
                re.compile(
                    rf"^stuck: no drain progress on shard {scene.shard} .*; shard {scene.shard} has 1 entry, oldest 10 min$"
                )
            )
            expect(verdict.locator("li")).to_contain_text(["2 dead letters wait for an operator"])
            expect(page.locator("#flags")).to_contain_text("DRAINER_ENABLED: on")
            rows = page.locator("#shards tbody tr")
            expect(rows).to_have_count(1)  # the other three shards are idle, folded away
            assert shard_cells(page, scene.shard) == {"depth": "1", "queued": "1", "leased": "0", "dead": "2"}
            expect(page.get_by_text("3 idle shards not shown.")).to_be_visible()
            shoot("dashboard")

            # 3. Drill down to the shard.
            rows.get_by_role("link", name=str(scene.shard), exact=True).click()
            expect(page).to_have_url(re.compile(rf"/admin/buffer/shard/{scene.shard}/$"))
            summary = page.locator("#shard-summary")
            expect(summary).to_contain_text(f"Shard {scene.shard}: 1 waiting (1 queued, 0 retrying)")
            expect(summary).to_contain_text("2 dead")
            assert cells(page.locator("#orgs tbody tr")) == [[f"acme ({scene.org_id})", "1", "1", ""]]
            env_rows = page.locator("#envs tbody tr")
            expect(env_rows).to_have_count(1)
            expect(env_rows.first).to_contain_text(scene.env_label)
            shoot("shard")
            # The shard's stuck entries, dead letters included (the tables list queues only).
            page.locator("#shard-stuck-entries").click()
            expect(page).to_have_url(re.compile(rf"/admin/sweep/stuckentry/\?shard={scene.shard}&state=open$"))
            expect(page.locator("#result_list tbody tr")).to_have_count(3)
            page.go_back()

            # 4. ... and to the env: its counts, its open stuck entries, the head of its queue.
            env_rows.get_by_role("link", name=scene.env_label).click()
            expect(page).to_have_url(re.compile(rf"/admin/buffer/org/{scene.org_id}/env/{scene.env_id}/$"))
            expect(page.locator("#env-summary")).to_contain_text(
                f"shard {scene.shard}: 1 queued, 0 retrying, 0 leased, 2 dead."
            )
            stuck = page.locator("#stuck tbody tr")
            expect(stuck).to_have_count(3)
            expect(stuck.filter(has_text="dead-lettered")).to_have_count(2)
            expect(stuck.filter(has_text="dead-lettered").first).to_contain_text("environment gone")
            expect(stuck.filter(has_text="stale (queued too long)")).to_have_count(1)
            for run_id in scene.dead_ids:
                expect(page.locator("#stuck").get_by_role("link", name=run_id)).to_be_visible()
            head = page.locator("#head tbody tr")
            expect(head).to_have_count(1)
            expect(head.first).to_contain_text(scene.queued_id)
            expect(head.first).to_contain_text("QUEUED")
            shoot("env")

            # 5. The queued run, which exists only in the buffer so far.
            head.get_by_role("link", name=scene.queued_id).click()
            expect(page).to_have_url(re.compile(rf"/admin/runs/taskrun/buffered/{scene.queued_id}/$"))
            run = page.locator("#buffered-run")
            expect(field(run, "run id")).to_have_text(scene.queued_id)
            expect(field(run, "task")).to_have_text("hello-world")
            expect(field(run, "status in the buffer")).to_have_text("QUEUED")
            expect(field(run, "shard")).to_have_text(str(scene.shard))
            expect(field(run, "environment")).to_contain_text(scene.env_label)
            snapshot = page.locator("#snapshot")
            expect(snapshot).to_contain_text(f'"id": "{scene.queued_id}"')
            expect(snapshot).to_contain_text('"task": "hello-world"')
            shoot("buffered-run")
            page.go_back()
            expect(page).to_have_url(re.compile(rf"/admin/buffer/org/{scene.org_id}/env/{scene.env_id}/$"))

            # 6. The env's stuck entries in the StuckEntry admin.
            page.locator("#env-stuck-entries").click()
            expect(page).to_have_url(re.compile(rf"/admin/sweep/stuckentry/\?env_id={scene.env_id}$"))
            results = page.locator("#result_list tbody tr")
            expect(results).to_have_count(3)
            expect(results.filter(has_text="dead-lettered")).to_have_count(2)
            page.locator("#action-toggle").check()
            expect(page.locator("input.action-select:checked")).to_have_count(3)
            page.select_option("select[name=action]", "redrive_dead_letters")
            expect(page.locator(".action-counter")).to_contain_text("3 of 3 selected")
            shoot("stuckentries")

            # 7. Re-drive: first a confirmation page (count, scope, a reason), then one message, the two dead
            # letters of the env back in its queue, and the action in the audit trail.
            page.locator("button[name=index]").click()
            expect(page.locator("#content")).to_contain_text("3 selected entries of")
            page.fill("textarea[name=reason]", "browser walk")
            shoot("redrive-confirm")
            page.locator("input[type=submit][value^='Yes']").click()
            expect(page.locator("ul.messagelist li.success")).to_have_text("Re-drive: 2 re-driven, 1 already handled.")
            expect(page.locator("ul.messagelist li")).to_have_count(1)
            shoot("redrive-message")
            page.goto("/admin/sweep/operatoraction/")
            expect(page.locator("#result_list tbody tr")).to_have_count(1)
            expect(page.locator("#result_list tbody tr")).to_contain_text("browser walk")
            shoot("audit-trail")
            page.go_back()

            # 8. Back to the dashboard: no dead letter left on the shard, the three entries queued.
            page.get_by_role("link", name="Buffer dashboard").click()
            expect(page).to_have_url(re.compile(r"/admin/buffer/$"))
            assert shard_cells(page, scene.shard) == {"depth": "3", "queued": "3", "leased": "0", "dead": "0"}
            expect(page.locator("#verdict strong")).to_have_text(
                re.compile(rf"^stuck: .*shard {scene.shard} has 3 entries")
            )
            expect(page.locator("#verdict li", has_text="dead")).to_have_count(0)  # no "dead letters wait" note
            expect(page.locator("#content")).to_contain_text("3 queued, 0 retrying, 0 leased (0 expired), 0 dead")
            shoot("after-redrive")

            # 9. The org's admin page steers the whole org: pause asks first (with a reason), the dashboard names
            # the paused org and links back to its page, and resume there acts at once (issue 18, item 5).
            org_page = f"/admin/runs/organization/{scene.org_id}/change/"
            page.goto(org_page)
            expect(page.locator("#buffer-switches")).to_have_text(re.compile(r"^\s*Buffer:\s+draining\.\s*$"))
            page.locator("form.buffer-switch input[value='Pause the whole org…']").click()
            expect(page.locator("#confirm-switch")).to_contain_text("organization acme")
            page.fill("input[name=reason]", "browser walk: org pause")
            shoot("org-pause-confirm")
            page.locator("input[type=submit][value='Yes, pause']").click()
            expect(page).to_have_url(re.compile(rf"{org_page}$"))
            expect(page.locator("#buffer-switches")).to_contain_text("the org is paused")
            shoot("org-paused")
            page.goto("/admin/buffer/")
            expect(page.locator("#drain-workers")).to_contain_text("none has beaten")  # no worker in this walk
            page.locator("#switched").get_by_role("link", name="acme").click()
            expect(page).to_have_url(re.compile(rf"{org_page}$"))
            page.locator("form.buffer-switch input[value='Resume the whole org']").click()
            expect(page.locator("#buffer-switches")).to_have_text(re.compile(r"^\s*Buffer:\s+draining\.\s*$"))
        finally:
            browser.close()
    return shots


def shard_cells(page: Page, shard: int) -> dict[str, str]:
    """The dashboard row of ``shard``: a few of its cells by column heading."""
    headings = [h.strip() for h in page.locator("#shards thead th").all_text_contents()]
    row = page.locator("#shards tbody tr").filter(has=page.get_by_role("link", name=str(shard), exact=True))
    expect(row).to_have_count(1)
    cells = [c.strip() for c in row.locator("td").all_inner_texts()]
    by_heading = dict(zip(headings, cells, strict=True))
    assert by_heading["shard"] == str(shard)
    return {name: by_heading[name] for name in ("depth", "queued", "leased", "dead")}


def field(table: Locator, label: str) -> Locator:
    """The value cell of the row headed ``label`` in a two-column detail table."""
    return table.locator("tr").filter(has=table.page.locator("th", has_text=re.compile(rf"^{label}$"))).locator("td")


def cells(rows: Locator) -> list[list[str]]:
    """The text of every cell of ``rows`` (a locator of table rows), row by row."""
    return [[c.strip() for c in row.locator("td").all_inner_texts()] for row in rows.all()]
