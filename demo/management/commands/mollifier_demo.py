"""``manage.py mollifier_demo [--hold]`` (``make demo``): the work is in ``demo.demo``."""

from __future__ import annotations

import argparse
import signal

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from demo.demo import DemoConfig, DemoError, run_demo


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


class Command(BaseCommand):
    help = (
        "Start web, worker, beat and flower from the Procfile, fire a trigger storm over HTTP and watch it drain, "
        "print what happened and the admin/Flower URLs, then stop the processes (unless --hold)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--port", type=_positive, default=8000, help="web port (default 8000)")
        parser.add_argument("--flower-port", type=_positive, default=5555, help="Flower port (default 5555)")
        parser.add_argument(
            "--runs",
            type=_positive,
            default=20_000,
            help="size of the storm: triggers of the bursting tenant (default 20000)",
        )
        parser.add_argument("--hold", action="store_true", help="keep the processes running until Ctrl-C")

    def handle(self, *args, port: int, flower_port: int, runs: int, hold: bool, **options):
        cfg = DemoConfig(root=settings.BASE_DIR, port=port, flower_port=flower_port, runs=runs, hold=hold)
        # Ctrl-C and SIGTERM both end the demo through its clean stop, even when SIGINT came in ignored
        # (as it does for background jobs of a non-interactive shell).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            run_demo(cfg, say=self.stdout.write)
        except DemoError as exc:
            raise CommandError(f"demo failed: {exc}") from None
        except KeyboardInterrupt:
            raise CommandError("demo interrupted; its processes were stopped") from None
