"""``manage.py mollifier_buffer <subcommand>``: operators' repairs of the buffer from the command line.

Thin: parses, calls a service function in ``sweep.repair``, prints what changed. More subcommands (stats,
stuck, requeue, fail, pause, resume) come with the operator screens.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from buffer.buffer import Buffer
from mollifier_project.clock import now_ms
from sweep import repair


class Command(BaseCommand):
    help = "Inspect and repair the Redis buffer."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="subcommand", required=True)
        redrive = sub.add_parser("redrive", help="Put dead-lettered entries back in their queues, attempts reset.")
        redrive.add_argument("--env", type=int, dest="env_id", help="only this environment's dead letters")
        redrive.add_argument("--limit", type=int, help="at most this many entries")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["subcommand"] == "redrive":
            done = repair.redrive(
                Buffer.from_settings(), now_ms=now_ms(), env_id=options["env_id"], limit=options["limit"]
            )
            self.stdout.write(f"redriven {done.changed}; already handled {done.already_handled}")
