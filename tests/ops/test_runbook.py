"""Every alert links its section of docs/runbook.md, the section exists, and it says what the alert means,
which screen to open and what to do."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK = ROOT / "docs" / "runbook.md"
RULE_FILES = sorted(p for p in (ROOT / "ops" / "prometheus").glob("*.yml") if not p.name.endswith("_test.yml"))
SCREENS = ("/admin/buffer/", "/admin/sweep/stuckentry/", "dashboard", "Flower")


def alerts() -> list[dict]:
    return [rule for f in RULE_FILES for group in yaml.safe_load(f.read_text())["groups"] for rule in group["rules"]
            if "alert" in rule]  # fmt: skip


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def sections() -> dict[str, str]:
    """Anchor → text of every ``##`` section of the runbook."""
    parts = re.split(r"^## (.+)$", RUNBOOK.read_text(), flags=re.M)
    return {slug(title): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


def test_there_are_alerts():
    assert len(alerts()) >= 7


@pytest.mark.parametrize("alert", alerts(), ids=lambda a: a["alert"])
def test_alert_links_an_existing_runbook_section(alert):
    url = alert["annotations"].get("runbook_url", "")

    match = re.fullmatch(r"docs/runbook\.md#([\w-]+)", url)
    assert match, f"{alert['alert']}: runbook_url {url!r} is not docs/runbook.md#<anchor>"
    assert match.group(1) == slug(alert["alert"])  # its own section, named after the alert
    assert match.group(1) in sections(), f"no section #{match.group(1)} in docs/runbook.md"


@pytest.mark.parametrize("alert", alerts(), ids=lambda a: a["alert"])
def test_runbook_section_says_meaning_screen_and_action(alert):
    body = sections()[slug(alert["alert"])]

    assert "**What it means.**" in body and "**Open.**" in body and "**Do.**" in body
    assert any(screen in body for screen in SCREENS), "names no screen"
    assert re.search(r"manage\.py|restart|Restore|add drain worker|MOLLIFIER_\w+", body, re.I), "names no action"


def test_runbook_links_between_sections_resolve():
    # Any heading is a link target (``### Audit`` under ``## Repairs`` too), as on GitHub.
    anchors = {slug(title) for title in re.findall(r"^#{1,6} (.+)$", RUNBOOK.read_text(), flags=re.M)}
    links = re.findall(r"\]\(#([\w-]+)\)", RUNBOOK.read_text())

    assert links and set(links) <= set(anchors), set(links) - set(anchors)


def test_runbook_names_only_known_mollifier_buffer_subcommands():
    used = set(re.findall(r"mollifier_buffer (\w+)", RUNBOOK.read_text()))
    used |= {w for row in re.findall(r"^\| `(\w+)`(?: / `(\w+)`)?", RUNBOOK.read_text(), re.M) for w in row if w}

    assert used <= {"redrive", "requeue", "fail", "pause", "resume", "close", "open", "stats", "stuck", "recount"}, used
