"""The dashboard's charts (docs/operations.md#dashboard-charts) through the test client, real Redis and Postgres:
samples written by a real fan-out tick, the SVG in the page, the "no samples yet" state, and the permission."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from drainer import tasks
from mollifier_project.clock import now_ms
from tests.chromium import measure_at_1366
from tests.factories import EnvironmentFactory

pytestmark = pytest.mark.django_db

DASHBOARD = reverse("buffer_admin:dashboard")
SVG = "{http://www.w3.org/2000/svg}"
CHART = '<svg xmlns="http://www.w3.org/2000/svg" class="buffer-chart"'


def _client(username: str, *perms: str) -> Client:
    user = User.objects.create_user(username, password="pw", is_staff=True)
    for perm in perms:
        app, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app, codename=codename))
    client = Client()
    client.force_login(user)
    return client


def svgs(html: str) -> list[ET.Element]:
    """Every chart of the page (not the admin's own icons), each parsed as XML: each is well-formed on its own."""
    found, at = [], 0
    while (start := html.find(CHART, at)) >= 0:
        end = html.index("</svg>", start) + len("</svg>")
        found.append(ET.fromstring(html[start:end]))
        at = end
    return found


def test_a_storm_rising_and_draining_is_drawn_overall_and_for_its_shard(admin_client, buffer, accept):
    env = EnvironmentFactory()
    shard = buffer.shard_for(env.org_id)
    now = now_ms()
    for i, (n, drained) in enumerate(((0, 0), (40, 0), (10, 30), (0, 10))):  # four samples 15 s apart
        t = now - (3 - i) * 15_000
        accept(env, n, now_ms=t)
        buffer.count_drained(shard, drained, now_ms=t)
        buffer.record_chart_samples(now_ms=t, every_s=15)

    html = admin_client.get(DASHBOARD).content.decode()

    charts = svgs(html)
    assert len(charts) == 3 + 3  # overall, and the one shard with anything in the hour
    assert f'id="charts-shard-{shard}"' in html and "No samples yet" not in html
    depth = charts[0]
    assert "all shards depth" in (depth.findtext(f"{SVG}title") or "")
    (line,) = depth.iter(f"{SVG}polyline")
    assert len(line.get("points", "").split()) == 4
    assert "50" in [t.text for t in depth.iter(f"{SVG}text")]  # the max label: 0, 40, 50, 50 (nothing leased)
    assert "<script" not in html[html.index('id="charts"') :]


def test_without_samples_the_dashboard_says_none_yet(admin_client, buffer):
    html = admin_client.get(DASHBOARD).content.decode()

    assert 'id="charts-empty"' in html and "No samples yet" in html
    assert CHART not in html


def test_with_charts_off_the_dashboard_says_so(admin_client, buffer, mollifier_settings):
    mollifier_settings(CHART_SAMPLE_S=0)

    html = admin_client.get(DASHBOARD).content.decode()

    assert 'id="charts-off"' in html and CHART not in html


def test_the_charts_need_the_view_permission(buffer):
    buffer.record_chart_samples(now_ms=now_ms(), every_s=15)

    denied = _client("lister", "sweep.view_stuckentry").get(DASHBOARD)
    allowed = _client("viewer", "sweep.view_buffer").get(DASHBOARD)

    assert denied.status_code == 403 and CHART.encode() not in denied.content
    assert allowed.status_code == 200 and len(svgs(allowed.content.decode())) == 3


def test_the_fan_out_tick_keeps_one_sample_per_interval_also_with_the_drainer_off(buffer, mollifier_settings):
    # A window of 2 s and ticks of 1 s: every tick asks for the gate, whatever the clock says now.
    mollifier_settings(DRAINER_ENABLED=False, CHART_SAMPLE_S=2, DRAIN_INTERVAL_S=1.0)

    tasks.fan_out()
    tasks.fan_out()  # the next tick of the same interval: no second sample

    per_shard = buffer.chart_samples(every_s=2)
    assert [len(samples) for samples in per_shard] == [1] * buffer.shards


MEASURE = """<script>window.addEventListener('load', () => {
  const charts = document.getElementById('charts');
  document.body.setAttribute('data-measure', JSON.stringify({
    page: document.documentElement.scrollWidth, window: window.innerWidth,
    charts: charts.scrollWidth, room: charts.clientWidth,
    drawn: document.querySelectorAll('svg.buffer-chart polyline').length}));
});</script></body>"""


def test_the_charts_fit_a_1366px_window(admin_client, buffer, accept, tmp_path):
    """Measured in a real browser (headless Chromium, 1366 × 768): the charts render (their polylines are in the
    DOM) and wrap instead of widening the page."""
    now = now_ms()
    envs: dict[int, object] = {}
    while len(envs) < buffer.shards:  # every shard busy: the most rows the dashboard draws
        env = EnvironmentFactory()
        envs.setdefault(buffer.shard_for(env.org_id), env)
    for env in envs.values():
        accept(env, 1, now_ms=now - 45_000)
    for i in range(3):
        buffer.record_chart_samples(now_ms=now - (2 - i) * 15_000, every_s=15)
    html = admin_client.get(DASHBOARD, {"refresh": "0"}).content.decode()

    size = measure_at_1366(html, tmp_path, measure=MEASURE)
    assert size["window"] == 1366
    assert size["drawn"] == 3 + 3 * buffer.shards  # the browser parsed every chart's line
    assert size["charts"] <= size["room"], size
    assert size["page"] <= size["window"], size
