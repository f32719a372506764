"""``manage.py mollifier_ops render`` (docs/operations.md#alerts): the alert rules and the Grafana dashboard with the
deployment's absolute runbook and admin URLs, so every link works inside Alertmanager and Grafana. The rendered
rules pass promtool's check and the promtool unit tests (rendered the same way); the settings refuse a relative
URL."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command

from mollifier_project.config import load_settings
from telemetry import ops_files

RUNBOOK_URL = "https://git.example.com/mollifier/blob/main/docs/runbook.md"
ADMIN_URL = "https://mollifier.example.com/admin"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    assert path, "promtool is missing: apt-get install prometheus (Debian ships promtool in it)"
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def rendered(tmp_path, mollifier_settings):
    mollifier_settings(RUNBOOK_URL=RUNBOOK_URL, ADMIN_URL=ADMIN_URL)
    call_command("mollifier_ops", "render", "--out", str(tmp_path / "ops"))
    return tmp_path / "ops"


def test_every_alert_of_the_rendered_rules_links_the_absolute_runbook(rendered):
    rules = [
        rule for group in yaml.safe_load((rendered / "mollifier.rules.yml").read_text())["groups"]
        for rule in group["rules"] if "alert" in rule
    ]  # fmt: skip
    assert len(rules) >= 10
    for rule in rules:
        assert rule["annotations"]["runbook_url"] == f"{RUNBOOK_URL}#{rule['alert'].lower()}", rule["alert"]
    # Nothing but the runbook links changed.
    template = ops_files.RULES.read_text()
    assert (rendered / "mollifier.rules.yml").read_text() == template.replace('"docs/runbook.md#', f'"{RUNBOOK_URL}#')


def test_the_rendered_rules_pass_promtool_check_and_the_unit_tests_rendered_alike(rendered):
    assert promtool("check", "rules", str(rendered / "mollifier.rules.yml")).returncode == 0
    tests = ops_files.RULES.with_name("mollifier.rules_test.yml").read_text()
    (rendered / "mollifier.rules_test.yml").write_text(ops_files.render_rules(tests, runbook_url=RUNBOOK_URL))

    done = promtool("test", "rules", str(rendered / "mollifier.rules_test.yml"))

    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr
    assert f'runbook_url: "{RUNBOOK_URL}#' in (rendered / "mollifier.rules_test.yml").read_text()


def test_the_rendered_dashboard_carries_both_urls_and_no_relative_link(rendered):
    dashboard = json.loads((rendered / "mollifier.json").read_text())
    values = {v["name"]: v for v in dashboard["templating"]["list"]}

    for name, url in (("runbook_url", RUNBOOK_URL), ("admin_url", ADMIN_URL)):
        assert values[name]["query"] == url and values[name]["current"]["value"] == url
    template = json.loads(ops_files.DASHBOARD.read_text())
    assert dashboard["panels"] == template["panels"]  # the links read the variables; the panels are unchanged
    urls = re.findall(r'"url": "([^"]*)"', (rendered / "mollifier.json").read_text())
    assert urls and all(u.startswith(("${runbook_url}", "${admin_url}")) for u in urls), urls


def test_render_refuses_without_a_runbook_url(tmp_path, mollifier_settings):
    mollifier_settings(RUNBOOK_URL="", ADMIN_URL=ADMIN_URL)
    with pytest.raises(CommandError, match="MOLLIFIER_RUNBOOK_URL"):
        call_command("mollifier_ops", "render", "--out", str(tmp_path / "ops"))
    assert not (tmp_path / "ops").exists()


@pytest.mark.parametrize(
    "url",
    ["docs/runbook.md", "/docs/runbook.md", "ftp://example.com/runbook", f"{RUNBOOK_URL}#top", f"{RUNBOOK_URL}?x=1"],
)
def test_the_urls_must_be_absolute_http_without_fragment_or_query(url):
    for variable in ("MOLLIFIER_RUNBOOK_URL", "MOLLIFIER_ADMIN_URL"):
        with pytest.raises(ImproperlyConfigured, match=variable):
            load_settings({variable: url})


def test_a_valid_url_is_kept_without_its_trailing_slash():
    cfg = load_settings({"MOLLIFIER_RUNBOOK_URL": RUNBOOK_URL, "MOLLIFIER_ADMIN_URL": ADMIN_URL + "/"})
    assert (cfg.RUNBOOK_URL, cfg.ADMIN_URL) == (RUNBOOK_URL, ADMIN_URL)
