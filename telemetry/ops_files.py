"""The alert rules and the Grafana dashboard as one deployment uses them (docs/operations.md#alerts).

The files in ``ops/`` are the project's: their runbook links are relative (``docs/runbook.md#…``, checked against
the runbook by the test suite), which works on a code host but not inside Alertmanager or Grafana, and the
dashboard's links to the buffer admin need that deployment's address. ``render`` writes copies with the
deployment's ``RUNBOOK_URL`` in every alert's ``runbook_url`` and both URLs as the dashboard variables'
values (``runbook_url``, ``admin_url``), which every dashboard link reads. Rendering over a template, rather than
Prometheus' ``$externalLabels`` in the annotations, keeps the URL out of every series' labels and lets the
promtool tests run against exactly the rendered text.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

OPS = Path(__file__).resolve().parents[1] / "ops"
RULES = OPS / "prometheus" / "mollifier.rules.yml"
DASHBOARD = OPS / "grafana" / "mollifier.json"
RELATIVE_RUNBOOK = "docs/runbook.md"
_RUNBOOK_ANNOTATION = re.compile(r'^(\s*runbook_url:\s*")' + re.escape(RELATIVE_RUNBOOK) + r'(#[^"]*)?"', re.M)


def render_rules(text: str, *, runbook_url: str) -> str:
    """Alert rules (or their promtool tests) with each ``runbook_url: "docs/runbook.md#x"`` made ``<runbook_url>#x``."""
    return _RUNBOOK_ANNOTATION.sub(lambda m: f'{m.group(1)}{runbook_url}{m.group(2) or ""}"', text)


def render_dashboard(dashboard: dict[str, Any], *, runbook_url: str, admin_url: str) -> dict[str, Any]:
    """The dashboard with its ``runbook_url`` and ``admin_url`` variables set (an empty URL leaves its default)."""
    values = {"runbook_url": runbook_url, "admin_url": admin_url}
    for variable in dashboard["templating"]["list"]:
        value = values.get(variable["name"])
        if value:
            variable["query"] = value
            variable["current"] = {"text": value, "value": value}
            variable["options"] = [{"selected": True, "text": value, "value": value}]
    return dashboard


def render(out_dir: Path, *, runbook_url: str, admin_url: str) -> list[Path]:
    """Write ``mollifier.rules.yml`` and ``mollifier.json`` for this deployment into ``out_dir``."""
    if not runbook_url:
        raise ValueError("MOLLIFIER_RUNBOOK_URL is empty: the rendered links would be as relative as the templates")
    out_dir.mkdir(parents=True, exist_ok=True)
    rules = out_dir / RULES.name
    rules.write_text(render_rules(RULES.read_text(), runbook_url=runbook_url))
    dashboard = out_dir / DASHBOARD.name
    rendered = render_dashboard(json.loads(DASHBOARD.read_text()), runbook_url=runbook_url, admin_url=admin_url)
    dashboard.write_text(json.dumps(rendered, indent=2, ensure_ascii=False) + "\n")
    return [rules, dashboard]
