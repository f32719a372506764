"""The alert rules in ops/prometheus (docs/architecture.md#telemetry) pass ``promtool check`` and their ``promtool test rules``
unit tests, every alert has a test, and every metric they read is one /metrics exposes.

promtool comes from Debian's ``prometheus`` package (``make test`` provisions it); without it these tests fail
rather than skip, so a CI that lost the install step cannot pass silently.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from buffer.buffer import Buffer
from telemetry import collector
from tests.sweep.test_metrics import parse

RULES_DIR = Path(__file__).resolve().parents[2] / "ops" / "prometheus"
RULE_FILES = sorted(p for p in RULES_DIR.glob("*.yml") if not p.name.endswith("_test.yml"))
TEST_FILES = sorted(RULES_DIR.glob("*_test.yml"))


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    assert path, "promtool is missing: apt-get install prometheus (Debian ships promtool in it)"
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=120, check=False)


def test_there_are_rule_files_and_rule_tests():
    assert RULE_FILES and TEST_FILES


def test_rule_files_are_valid():
    done = promtool("check", "rules", *map(str, RULE_FILES))
    assert done.returncode == 0, done.stdout + done.stderr


def test_alert_rules_fire_and_stay_silent_as_their_unit_tests_say():
    done = promtool("test", "rules", *map(str, TEST_FILES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_unit_test():
    alerts = {name for f in RULE_FILES for name in re.findall(r"^\s*- alert: (\w+)", f.read_text(), re.M)}
    tested = {name for f in TEST_FILES for name in re.findall(r"alertname: (\w+)", f.read_text())}
    assert alerts and alerts <= tested, alerts - tested


def test_rules_read_only_metrics_that_the_exposition_has(key_prefix, mollifier_settings):
    mollifier_settings(SHARDS=1)
    # data_losses: what the view reads from Postgres (tests/drainer/test_epoch.py scrapes it through the view).
    exposed = set(parse(collector.exposition(Buffer.from_settings(), now_ms=0, stale_threshold_s=300,
                                             sweep_enabled=True, data_losses=0).decode()))  # fmt: skip
    used = {name for f in RULE_FILES for name in re.findall(r"\b(mollifier_\w+)", f.read_text())}
    assert used and used <= exposed, used - exposed
