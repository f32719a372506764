"""The operator screens in a real browser: Debian's Chromium, driven headless by Playwright, against gunicorn
serving the test database (``tests.live``).

One walk an operator would take: log in, find the buffer dashboard on the admin index, read its verdict, drill
down to the shard and to the env holding dead letters, open a buffered run, pause the env (through its
confirmation page, with a reason), re-drive the env's dead letters from the StuckEntry admin (confirmed, with a
reason), resume the env from the dashboard, and read all three actions in the env's audit trail. Drain rounds
between the steps show the switch's effect: nothing is written while the env is paused, everything once it is
resumed. Every step asserts what the page says. Each changed screen (dashboard, env page, confirmation pages,
StuckEntry list, audit list) must fit a 1366 px window without scrolling sideways, and is shot at 1366 px and
1920 px into ``.data/screenshots/`` (the test prints the paths; never committed).

Chromium comes from Debian (``scripts/provision.sh chromium``, run by ``make test``); Playwright never
downloads a browser of its own (no ``playwright install``): it launches ``/usr/bin/chromium``.

The browser runs in a thread of its own. Playwright's sync API keeps an asyncio loop running in the thread
that drives it, and Django refuses ORM calls from such a thread (``SynchronousOnlyOperation``); so the ORM is
used only in the test's own thread: before and after the walk, and for the drain rounds the walk asks for
(``InTestThread``), which run there through the drain task a worker runs (``drainer.drain_shard``).
"""

from __future__ import annotations

import queue
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
import redis as redis_lib
from django.conf import settings
from django.contrib.auth.models import Permission, User
from playwright.sync_api import Locator, Page, expect, sync_playwright

from buffer.buffer import Buffer
from buffer.values import AcceptStatus
from drainer import tasks
from mollifier_project.clock import now_ms
from runs.models import TaskRun
from runs.snapshot import to_snapshot
from sweep import sweep
from sweep.admin.stuck_entries import REASON_MAX
from sweep.models import OperatorAction, StuckEntry, StuckKind
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
WALK_BOUND_S = 60
NARROW, WIDE = {"width": 1366, "height": 900}, {"width": 1920, "height": 1080}
T = TypeVar("T")
R = TypeVar("R")


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
    return stuck_scene(buffer, server, "acme", "stuck-prod")


@pytest.fixture
def long_named_env(buffer, server) -> Scene:
    """The same, for an org and env whose slugs are as long as a slug may be, without a hyphen to break at."""
    return stuck_scene(buffer, server, "a" * 64, "e" * 64)


def stuck_scene(buffer: Buffer, server: Gunicorn, org_slug: str, env_slug: str) -> Scene:
    """An env with three entries accepted 10 minutes ago: two leased and dead-lettered, one still queued;
    then one sweep pass of its shard, so the StuckEntry rows exist (2 dead, 1 stale)."""
    env = EnvironmentFactory(org=OrganizationFactory(slug=org_slug), slug=env_slug)
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
def screenshots(request) -> Path:
    """``.data/screenshots/<test>/``, emptied first."""
    into = SCREENSHOTS / request.node.name.removeprefix("test_")[:60]
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    return into


def test_an_operator_steers_and_repairs_a_stuck_env_from_the_admin(operator, buffer, stuck_env, screenshots):
    """The walk (``walk``) in its own thread; the drain rounds it asks for run here, through the drain task."""
    scene = stuck_env
    runs = RunsOf(scene)
    started = time.monotonic()

    with ThreadPoolExecutor(1) as pool:  # the ORM stays in this thread (module docstring)
        here = InTestThread()
        shots = here.serve(pool.submit(walk, scene, screenshots, here), timeout=WALK_BOUND_S)

    elapsed = time.monotonic() - started
    everything = (*scene.dead_ids, scene.queued_id)
    assert runs.written() == sorted(everything)  # each entry became its row, and the buffer knows it
    for run_id in everything:
        entry = buffer.get(run_id, org_id=scene.org_id)
        assert entry is None or (entry.status, entry.materialised) == ("ACKED", True)
    stats = buffer.shard_stats_of(scene.shard, now_ms=now_ms())
    assert (stats.queued, stats.retrying, stats.leased, stats.dead) == (0, 0, 0, 0)
    actions = list(OperatorAction.objects.order_by("at", "id").values_list("user", "source", "action", "reason"))
    assert actions == [
        (USERNAME, "admin", "pause", "walk: <b>hold</b> acme"),
        (USERNAME, "admin", "Re-drive", "browser walk"),
        (USERNAME, "admin", "resume", ""),
    ]
    assert elapsed < WALK_BOUND_S
    print(f"\nbrowser walk took {elapsed:.1f} s; screenshots in {screenshots}:")
    for path in shots:
        assert path.stat().st_size > 0
        print(f"  {path.name}")


def test_the_screens_fit_1366_px_whatever_the_length_of_the_names_shown(operator, buffer, long_named_env, screenshots):
    """Slugs of 64 characters without a hyphen (the longest an org or env slug may be), on every screen that
    names the env, and a reason without a space as long as a reason may be, in the audit list."""
    with ThreadPoolExecutor(1) as pool:  # the ORM stays in this thread (module docstring)
        shots = pool.submit(walk_long_names, long_named_env, screenshots).result(timeout=WALK_BOUND_S)

    assert list(OperatorAction.objects.values_list("action", flat=True)) == ["Re-drive", "pause"]
    print(f"\nscreenshots in {screenshots}:")
    for path in shots:
        print(f"  {path.name}")


class RunsOf:
    """The scene's runs as the drain leaves them: its Postgres rows, and a drain round through the drain task."""

    def __init__(self, scene: Scene) -> None:
        self.scene = scene

    def written(self) -> list[str]:
        ids = (*self.scene.dead_ids, self.scene.queued_id)
        return sorted(TaskRun.objects.filter(id__in=ids).values_list("id", flat=True))

    def drain(self) -> list[str]:
        """One drain round of the scene's shard (``drainer.drain_shard``, as a worker runs it); the rows
        written so far."""
        tasks.drain_shard(self.scene.shard)
        return self.written()


class InTestThread:
    """Calls made by the walk's thread and run in the test's own (the ORM's, module docstring)."""

    def __init__(self) -> None:
        self.calls: queue.Queue[tuple[Callable[[], object], Future[object]]] = queue.Queue()

    def run(self, fn: Callable[[], T]) -> T:
        done: Future[object] = Future()
        self.calls.put((fn, done))
        return done.result(timeout=STEP_TIMEOUT_MS / 1000)  # type: ignore[return-value]

    def serve(self, walk_done: Future[R], *, timeout: float) -> R:
        deadline = time.monotonic() + timeout
        while not walk_done.done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the browser walk took over {timeout} s")
            try:
                fn, done = self.calls.get(timeout=0.05)
            except queue.Empty:
                continue
            try:
                done.set_result(fn())
            except BaseException as exc:  # handed to the walk, which fails with it
                done.set_exception(exc)
        return walk_done.result()


# ------------------------------------------------------------------------------------------- the walk


def walk(scene: Scene, into: Path, here: InTestThread) -> list[Path]:
    """The operator's clicks, in a browser of its own; returns the screenshots taken, in order."""
    shots: list[Path] = []
    runs = RunsOf(scene)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=NARROW, base_url=scene.url)
            context.set_default_timeout(STEP_TIMEOUT_MS)
            expect.set_options(timeout=STEP_TIMEOUT_MS)
            page = context.new_page()
            shoot = Camera(page, into, shots)

            # 1. The admin sends an anonymous visitor to its login; log in there.
            page.goto("/admin/")
            expect(page).to_have_url(re.compile(r"/admin/login/\?next=/admin/$"))
            expect(page.locator("#login-form")).to_be_visible()
            page.fill("#id_username", USERNAME)
            page.fill("#id_password", "not-the-password")
            page.click("input[type=submit]")
            expect(page.locator("p.errornote")).to_contain_text("Please enter the correct username and password")
            page.fill("#id_username", USERNAME)
            page.fill("#id_password", PASSWORD)
            shoot("login")
            page.click("input[type=submit]")

            # 2. The admin index offers the dashboard: found there, not typed.
            expect(page).to_have_url(re.compile(r"/admin/$"))
            page.locator("#content-main").get_by_role("link", name="Buffer dashboard").first.click()

            # 3. The dashboard: stuck (nothing drains), with the dead letters noted; the shard's row.
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
            expect(page.locator("#as-of")).to_contain_text("As of ")
            rows = page.locator("#shards tbody tr")
            expect(rows).to_have_count(1)  # the other three shards are idle, folded away
            assert shard_cells(page, scene.shard) == {"depth": "1", "queued": "1", "leased": "0", "dead": "2"}
            expect(page.get_by_text("3 idle shards not shown.")).to_be_visible()
            expect(page.locator("#switched")).to_have_count(0)  # nothing paused or closed yet
            shoot("dashboard", both=True)

            # 4. Drill down to the shard.
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

            # 5. ... and to the env: its counts, its open stuck entries, the head of its queue.
            env_rows.get_by_role("link", name=scene.env_label).click()
            env_url = re.compile(rf"/admin/buffer/org/{scene.org_id}/env/{scene.env_id}/$")
            expect(page).to_have_url(env_url)
            env_summary = page.locator("#env-summary")
            expect(env_summary).to_contain_text(f"shard {scene.shard}: 1 queued, 0 retrying, 0 leased, 2 dead.")
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
            shoot("env", both=True)

            # 6. The queued run, which exists only in the buffer so far.
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
            expect(page).to_have_url(env_url)

            # 7. Pause the env: a confirmation page first (what waits, the env by name, a reason), then the env
            # page again, saying so. The reason carries markup, which must come back as text.
            page.locator("#env-switches").get_by_role("button", name="Pause draining this env…").click()
            confirm = page.locator("#confirm-switch")
            expect(confirm).to_contain_text(f"Pause draining for environment {scene.env_label}?")
            expect(confirm).to_contain_text("It has 1 queued and 0 retrying entry in the buffer.")
            page.fill("#switch-reason", "walk: <b>hold</b> acme")
            shoot("pause-confirm", both=True)
            page.get_by_role("button", name="Yes, pause").click()
            expect(page).to_have_url(env_url)
            expect(page.locator("ul.messagelist li.success")).to_have_text(f"Env {scene.env_label} paused.")
            expect(env_summary).to_contain_text("paused")
            expect(page.locator("#env-switches")).to_contain_text("Resume draining this env")

            # 8. A drain round while paused writes nothing.
            assert here.run(runs.drain) == []
            page.reload()
            expect(env_summary).to_contain_text("paused: 1 queued, 0 retrying, 0 leased, 2 dead.")
            shoot("env-paused", both=True)

            # 9. The env's stuck entries in the StuckEntry admin, all three selected, re-driven after a
            # confirmation page (count, scope, a reason): the two dead letters are back in the env's queue.
            page.locator("#env-stuck-entries").click()
            expect(page).to_have_url(re.compile(rf"/admin/sweep/stuckentry/\?env_id={scene.env_id}$"))
            results = page.locator("#result_list tbody tr")
            expect(results).to_have_count(3)
            expect(results.filter(has_text="dead-lettered")).to_have_count(2)
            page.locator("#action-toggle").check()
            expect(page.locator("input.action-select:checked")).to_have_count(3)
            page.select_option("select[name=action]", "redrive_dead_letters")
            expect(page.locator(".action-counter")).to_contain_text("3 of 3 selected")
            shoot("stuckentries", both=True)
            page.locator("button[name=index]").click()
            expect(page.locator("#content")).to_contain_text(
                f"3 selected entries of {scene.env_label} ({scene.env_id})"
            )
            page.fill("textarea[name=reason]", "browser walk")
            shoot("redrive-confirm", both=True)
            page.locator("input[type=submit][value^='Yes']").click()
            expect(page.locator("ul.messagelist li.success")).to_have_text("Re-drive: 2 re-driven, 1 already handled.")
            expect(page.locator("ul.messagelist li")).to_have_count(1)
            shoot("redrive-message")

            # 10. Still paused: the dashboard names the env and offers its resume; a drain round writes nothing.
            assert here.run(runs.drain) == []
            page.get_by_role("link", name="Buffer dashboard").first.click()
            expect(page).to_have_url(re.compile(r"/admin/buffer/$"))
            switched = page.locator("#switched")
            expect(switched).to_contain_text(f"Paused envs: {scene.env_label}")
            assert shard_cells(page, scene.shard) == {"depth": "3", "queued": "3", "leased": "0", "dead": "0"}
            expect(page.locator("#verdict li", has_text="dead")).to_have_count(0)  # no "dead letters wait" note
            shoot("dashboard-paused", both=True)

            # 11. Resume from the dashboard; the next drain round writes all three runs.
            switched.get_by_role("button", name="Resume").click()
            expect(page).to_have_url(re.compile(r"/admin/buffer/$"))
            expect(page.locator("ul.messagelist li.success")).to_have_text(f"Env {scene.env_label} resumed.")
            expect(page.locator("#switched")).to_have_count(0)
            assert here.run(runs.drain) == sorted((*scene.dead_ids, scene.queued_id))
            page.reload()
            expect(page.locator("#content")).to_contain_text("0 queued, 0 retrying, 0 leased (0 expired), 0 dead")
            shoot("dashboard-drained", both=True)

            # 12. The env page links its audit trail: the pause (its reason shown as typed), the re-drive and the
            # resume, newest first.
            page.goto(f"/admin/buffer/org/{scene.org_id}/env/{scene.env_id}/")  # the page the operator left
            expect(env_summary).to_contain_text("0 queued, 0 retrying, 0 leased, 0 dead.")
            page.locator("#env-audit").click()
            expect(page).to_have_url(re.compile(rf"/admin/sweep/operatoraction/\?env_id={scene.env_id}$"))
            audit_rows = page.locator("#result_list tbody tr")
            expect(audit_rows).to_have_count(3)
            expect(audit_rows.nth(0)).to_contain_text("resume")
            expect(audit_rows.nth(1)).to_contain_text("Re-drive")
            expect(audit_rows.nth(1)).to_contain_text("browser walk")
            expect(audit_rows.nth(2)).to_contain_text("pause")
            expect(audit_rows.nth(2)).to_contain_text("walk: <b>hold</b> acme")
            expect(audit_rows.locator("b")).to_have_count(0)  # the reason's markup stayed text
            for row in audit_rows.all():
                expect(row).to_contain_text(USERNAME)
                expect(row).to_contain_text(scene.env_label)
            shoot("audit-trail", both=True)
        finally:
            browser.close()
    return shots


@dataclass
class Camera:
    """Screenshots of ``page`` into ``into``, listed in ``shots``."""

    page: Page
    into: Path
    shots: list[Path]

    def __call__(self, name: str, *, both: bool = False) -> None:
        """A full-page screenshot at 1366 px; ``both``: a changed screen, which must also fit 1366 px without
        scrolling sideways, and gets a second screenshot at 1920 px."""
        path = self.into / f"{name}-1366.png"
        self.page.screenshot(path=str(path), full_page=True)
        self.shots.append(path)
        if both:
            assert_fits(self.page, name)
            self.page.set_viewport_size(WIDE)
            path = self.into / f"{name}-1920.png"
            self.page.screenshot(path=str(path), full_page=True)
            self.shots.append(path)
            self.page.set_viewport_size(NARROW)


FITS = """() => ({
    page: document.documentElement.scrollWidth, window: window.innerWidth,
    results: Array.from(document.querySelectorAll('.results'), r => [r.scrollWidth, r.clientWidth]),
    broken_headings: Array.from(document.querySelectorAll('#content thead th')).flatMap(th => {
        const broken = [], words = document.createTreeWalker(th, NodeFilter.SHOW_TEXT);
        for (let n = words.nextNode(); n; n = words.nextNode()) {
            const word = n.textContent.trim(), r = document.createRange();
            r.selectNodeContents(n);
            if (word && !word.includes(" ") && r.getClientRects().length > 1) broken.push(word);
        }
        return broken;
    }),
})"""


def assert_fits(page: Page, name: str) -> None:
    """No scrolling sideways: neither the page nor an admin list's table, which scrolls inside its own box
    (``.results``) and would clip columns while the page itself fits (as tests/ops/test_admin_screens.py
    measures the run list). Nor fitting by breaking a one-word column heading ("DEPT" over "H")."""
    size = page.evaluate(FITS)
    assert size["page"] <= size["window"], f"{name} overflows the window: {size}"
    for scroll_width, client_width in size["results"]:
        assert scroll_width <= client_width, f"{name}: its table scrolls sideways: {size}"
    assert size["broken_headings"] == [], f"{name}: one-word column headings broken over lines: {size}"


def walk_long_names(scene: Scene, into: Path) -> list[Path]:
    """Pause the long-named env and re-drive its dead letters, asserting that each screen fits on the way."""
    shots: list[Path] = []
    reason = "x" * REASON_MAX
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=NARROW, base_url=scene.url)
            context.set_default_timeout(STEP_TIMEOUT_MS)
            expect.set_options(timeout=STEP_TIMEOUT_MS)
            page = context.new_page()
            shoot = Camera(page, into, shots)
            env_page = f"/admin/buffer/org/{scene.org_id}/env/{scene.env_id}/"
            page.goto(f"/admin/login/?next={env_page}")
            page.fill("#id_username", USERNAME)
            page.fill("#id_password", PASSWORD)
            page.click("input[type=submit]")

            expect(page.locator("#env-summary")).to_contain_text(scene.env_label)
            shoot("env", both=True)
            page.locator("#env-switches").get_by_role("button", name="Pause draining this env…").click()
            expect(page.locator("#confirm-switch")).to_contain_text(scene.env_label)
            page.fill("#switch-reason", reason)
            shoot("pause-confirm", both=True)
            page.get_by_role("button", name="Yes, pause").click()
            expect(page.locator("ul.messagelist li.success")).to_contain_text("paused")
            shoot("env-paused", both=True)

            page.get_by_role("link", name="Buffer dashboard").first.click()
            expect(page.locator("#switched")).to_contain_text(scene.env_label)
            shoot("dashboard", both=True)

            page.goto(env_page)
            page.locator("#env-stuck-entries").click()
            expect(page.locator("#result_list tbody tr")).to_have_count(3)
            page.locator("#action-toggle").check()
            page.select_option("select[name=action]", "redrive_dead_letters")
            shoot("stuckentries", both=True)
            page.locator("button[name=index]").click()
            page.fill("textarea[name=reason]", reason)
            shoot("redrive-confirm", both=True)
            page.locator("input[type=submit][value^='Yes']").click()
            expect(page.locator("ul.messagelist li.success")).to_contain_text("2 re-driven")

            page.goto(env_page)
            page.locator("#env-audit").click()
            expect(page.locator("#result_list tbody tr")).to_have_count(2)
            shoot("audit-trail", both=True)
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
