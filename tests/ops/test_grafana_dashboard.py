"""The Grafana dashboard (ops/grafana/mollifier.json) loads, shows what operators watch, and every PromQL
expression in it parses and names only metrics that /metrics exports (read from a scrape of real Redis)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml
from django.urls import resolve

from tests.ops.test_runbook import RUNBOOK, slug

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "ops" / "grafana" / "mollifier.json"
# Grafana's own interval variables, replaced as Grafana would before the query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def load() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict) -> list[dict]:
    """The panels that query Prometheus (not rows, not the alert list)."""
    return [p for p in dashboard["panels"] if p["type"] not in ("row", "alertlist")]


def expressions(dashboard: dict) -> list[str]:
    return [target["expr"] for panel in panels(dashboard) for target in panel["targets"]]


def test_dashboard_is_grafana_json_with_a_query_per_panel():
    dashboard = load()

    assert dashboard["uid"] == "mollifier" and dashboard["title"]
    assert [(v["name"], v["type"]) for v in dashboard["templating"]["list"]] == [
        ("datasource", "datasource"), ("runbook_url", "textbox"), ("admin_url", "textbox")
    ]  # fmt: skip
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        assert panel["title"] and panel["gridPos"]["w"] > 0, panel
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]


def test_dashboard_reads_only_metrics_that_metrics_exports(exported):
    used = {name for expr in expressions(load()) for name in re.findall(r"\b(mollifier_\w+)", expr)}

    assert used and used <= exported, used - exported


def test_every_expression_names_a_mollifier_metric():
    assert all(re.search(r"\bmollifier_\w+", expr) for expr in expressions(load()))


def test_dashboard_shows_what_operators_watch():
    exprs = expressions(load())
    used = {name for expr in exprs for name in re.findall(r"\b(mollifier_\w+)", expr)}

    assert {
        "mollifier_buffer_depth", "mollifier_buffer_oldest_age_seconds", "mollifier_drain_rate_per_second",
        "mollifier_shard_drain_rate_per_second", "mollifier_drain_eta_seconds", "mollifier_drain_eta_seconds_max",
        "mollifier_shard_drain_eta_seconds", "mollifier_buffer_dead", "mollifier_stale_entries",
        "mollifier_decisions_total", "mollifier_dwell_seconds_bucket",
    } <= used  # fmt: skip
    dwell = [e for e in exprs if "mollifier_dwell_seconds_bucket" in e]
    assert {re.search(r"histogram_quantile\((0\.\d+)", e).group(1) for e in dwell} == {"0.5", "0.95", "0.99"}


def test_every_expression_is_valid_promql(tmp_path):
    """promtool parses each expression as a recording rule (the same parser Prometheus uses)."""
    rules = []
    for i, expr in enumerate(expressions(load())):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:expr_{i}", "expr": expr})
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus (Debian ships promtool in it)"

    done = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )

    assert done.returncode == 0, done.stdout + done.stderr


def steps(panel: dict) -> list[tuple[str, float | None]]:
    thresholds = panel["fieldConfig"]["defaults"].get("thresholds", {"steps": []})
    assert thresholds.get("mode", "absolute") == "absolute", panel["title"]
    return [(step["color"], step["value"]) for step in thresholds["steps"]]


def panel_reading(dashboard: dict, kind: str, expr: str) -> dict:
    (panel,) = [p for p in panels(dashboard) if p["type"] == kind and [t["expr"] for t in p["targets"]] == [expr]]
    return panel


def test_depth_oldest_age_eta_and_liveness_stats_have_thresholds_at_the_alerts():
    """Issue 18: no thresholds on depth, oldest age and ETA. The reds sit where the alerts fire (ETA 900 s:
    MollifierDrainEtaTooLong; last progress and tick 60 s: MollifierDrainNoProgress, MollifierFanOutNotTicking);
    the oldest age turns orange at the default stale threshold (300 s, MollifierOldestEntryTooOld)."""
    dashboard = load()
    expected = {
        "max(mollifier_buffer_depth)": [("green", None), ("orange", 10_000), ("red", 100_000)],
        "max(mollifier_buffer_oldest_age_seconds)": [("green", None), ("orange", 300), ("red", 900)],
        "max(mollifier_drain_eta_seconds_max)": [("green", None), ("orange", 300), ("red", 900)],
        "max(mollifier_drain_last_progress_age_seconds)": [("green", None), ("orange", 22), ("red", 60)],
        "max(mollifier_fan_out_last_tick_age_seconds)": [("green", None), ("orange", 10), ("red", 60)],
    }
    for expr, want in expected.items():
        assert steps(panel_reading(dashboard, "stat", expr)) == want, expr


def test_the_liveness_gauges_have_a_graph_with_the_alert_line():
    dashboard = load()
    (graph,) = [
        p for p in panels(dashboard)
        if p["type"] == "timeseries" and any("mollifier_drain_last_progress_age_seconds" in t["expr"] for t in p["targets"])
    ]  # fmt: skip
    assert {t["expr"] for t in graph["targets"]} == {
        "max(mollifier_drain_last_progress_age_seconds)", "max(mollifier_fan_out_last_tick_age_seconds)"
    }  # fmt: skip
    assert graph["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "line"
    assert ("red", 60) in steps(graph)


def test_panels_do_not_overlap():
    taken: set[tuple[int, int]] = set()
    for panel in load()["panels"]:
        g = panel["gridPos"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & taken, panel["title"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        taken |= cells


# -------------------------------------------------------------------------- issue 18, item 9: what was missing


def links(dashboard: dict) -> list[dict]:
    """Every link of the dashboard: its own, each panel's, and each panel's data links."""
    found = list(dashboard["links"])
    for panel in dashboard["panels"]:
        found += panel.get("links", [])
        found += panel.get("fieldConfig", {}).get("defaults", {}).get("links", [])
    return found


def test_an_alert_list_panel_shows_the_mollifier_alerts_firing_and_pending():
    (alerts,) = [p for p in load()["panels"] if p["type"] == "alertlist"]
    options = alerts["options"]
    assert options["alertName"] == "Mollifier" and not options["dashboardAlerts"]
    assert options["stateFilter"]["firing"] and options["stateFilter"]["pending"]


def test_the_steering_and_worker_gauges_each_have_a_stat_and_a_graph():
    gauges = {
        "mollifier_drain_workers_alive", "mollifier_drain_workers_stale", "mollifier_paused_orgs",
        "mollifier_paused_envs", "mollifier_closed_intake_envs", "mollifier_drain_circuits_open",
        "mollifier_redis_breaker_open",
    }  # fmt: skip
    for kind in ("stat", "timeseries"):
        read = {
            name for p in panels(load()) if p["type"] == kind for t in p["targets"]
            for name in re.findall(r"\b(mollifier_\w+)", t["expr"])
        }  # fmt: skip
        assert gauges <= read, (kind, gauges - read)
    dashboard = load()
    assert steps(panel_reading(dashboard, "stat", "max(mollifier_drain_workers_alive)")) == [
        ("red", None),
        ("green", 1),
    ]
    assert steps(panel_reading(dashboard, "stat", "max(mollifier_drain_circuits_open)")) == [
        ("green", None),
        ("red", 1),
    ]


def test_every_per_shard_panel_links_each_shard_to_its_admin_page():
    dashboard = load()
    (admin_url,) = [v["query"] for v in dashboard["templating"]["list"] if v["name"] == "admin_url"]
    per_shard = [p for p in panels(dashboard) if any("mollifier_shard_" in t["expr"] for t in p["targets"])]
    assert len(per_shard) >= 2
    for panel in per_shard:
        (link,) = panel["fieldConfig"]["defaults"]["links"]
        url = link["url"].replace("${admin_url}", admin_url).replace("${__field.labels.shard}", "3")
        assert url.startswith(admin_url + "/"), panel["title"]
        match = resolve(url.removeprefix(admin_url.rsplit("/admin", 1)[0]))  # the path Django serves
        assert match.view_name == "buffer_admin:shard" and match.kwargs == {"shard": 3}, panel["title"]


def test_every_runbook_link_goes_through_the_variable_to_a_runbook_heading():
    headings = {slug(t) for t in re.findall(r"^#{1,6} (.+)$", RUNBOOK.read_text(), flags=re.M)}
    runbook_links = [link["url"] for link in links(load()) if "runbook" in link["url"]]
    assert len(runbook_links) >= 8
    for url in runbook_links:
        assert url == "${runbook_url}" or url.startswith("${runbook_url}#"), url
        assert url == "${runbook_url}" or url.split("#", 1)[1] in headings, url
