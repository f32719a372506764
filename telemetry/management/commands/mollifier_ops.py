"""``manage.py mollifier_ops render --out DIR``: the alert rules and the Grafana dashboard with this deployment's
runbook and admin URLs (MOLLIFIER_RUNBOOK_URL, MOLLIFIER_ADMIN_URL) in their links (docs/operations.md#alerts).
Thin: ``telemetry.ops_files`` does the work."""

from __future__ import annotations

from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from telemetry import ops_files


class Command(BaseCommand):
    help = "Write ops/ files with this deployment's absolute runbook and admin URLs."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        render = sub.add_parser("render", help="write mollifier.rules.yml and mollifier.json into --out")
        render.add_argument("--out", required=True, type=Path, help="directory to write into (created if missing)")

    def handle(self, *args: Any, **options: Any) -> None:
        cfg = settings.MOLLIFIER
        try:
            written = ops_files.render(options["out"], runbook_url=cfg.RUNBOOK_URL, admin_url=cfg.ADMIN_URL)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        for path in written:
            self.stdout.write(f"wrote {path}")
        if not cfg.ADMIN_URL:
            self.stdout.write(
                "MOLLIFIER_ADMIN_URL is empty: the dashboard keeps its admin_url default (edit it in Grafana)"
            )
