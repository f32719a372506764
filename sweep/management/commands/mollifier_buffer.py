"""``manage.py mollifier_buffer <subcommand>``: see and repair the Redis buffer from the command line.

Thin: parses, calls the same service functions as the admin (``sweep.repair``, ``Buffer``'s reads), prints
a table, and exits non-zero (``CommandError``) on a bad argument or a failure (docs/runbook.md).

  stats                                   per shard: depth, leased, retrying, dead, oldest, rate, ETA, circuit
  stuck [--kind K] [--env ID]             open StuckEntry rows (what the sweep found), oldest first
  redrive --run ID …                      these dead letters (only these) back to their queues, attempts reset
  redrive --env ID | --all [--limit N]    every dead letter of an env (of every env), explicitly
  requeue [--env ID] [--run ID …]         retrying, dead and expired entries to their queue heads now
  fail [--env ID] [--run ID …]            SYSTEM_FAILURE rows for stuck entries (through the drain's path)

Repairs print one line, each outcome counted separately (``sweep.repair.describe``), e.g.
``fail: 1 failed, 1 dead-lettered: <reason>, 0 already handled``.
  pause --env ID | --org ID               stop draining (entries keep being accepted)
  resume --env ID | --org ID
  close --env ID / open --env ID          refuse (429) / accept an env's triggers again
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from buffer.buffer import Buffer
from drainer.limits import DrainLimits
from mollifier_project.clock import now_ms
from runs.models import Environment
from sweep import dashboard, repair
from sweep.models import StuckEntry, StuckKind

STUCK_LIMIT = 200


class Command(BaseCommand):
    help = "See and repair the Redis buffer (docs/runbook.md)."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="subcommand", required=True)
        sub.add_parser("stats", help="per-shard figures, read live from Redis")
        sub.add_parser("recount", help="rebuild every shard's queued counter and queue heads from its queues")
        stuck = sub.add_parser("stuck", help="open StuckEntry rows, oldest first")
        stuck.add_argument("--kind", choices=[k.value for k in StuckKind])
        stuck.add_argument("--env", type=int, dest="env_id")
        redrive = sub.add_parser("redrive", help="dead letters back to their queues, attempts reset")
        scope = redrive.add_mutually_exclusive_group(required=True)
        scope.add_argument("--run", dest="run_ids", nargs="+", default=[], help="these dead letters, only these")
        scope.add_argument("--env", type=int, dest="env_id", help="every dead letter of this environment")
        scope.add_argument("--all", action="store_true", dest="every_env", help="every dead letter of every env")
        redrive.add_argument("--limit", type=int, help="with --env or --all: at most this many entries")
        for name, text in (("requeue", "retrying, dead and expired entries to their queue heads now"),
                           ("fail", "SYSTEM_FAILURE rows for stuck entries")):  # fmt: skip
            action = sub.add_parser(name, help=text)
            action.add_argument("--env", type=int, dest="env_id", help="the open stuck entries of this env")
            action.add_argument("--run", dest="run_ids", nargs="+", default=[], help="these stuck entries")
        for name in ("pause", "resume"):
            switch = sub.add_parser(name, help=f"{name} draining for an env or an org")
            which = switch.add_mutually_exclusive_group(required=True)
            which.add_argument("--env", type=int, dest="env_id")
            which.add_argument("--org", type=int, dest="org_id")
        for name in ("close", "open"):
            sub.add_parser(name, help=f"{name} an env's intake").add_argument(
                "--env", type=int, dest="env_id", required=True
            )

    def handle(self, *args: Any, **options: Any) -> None:
        buffer = Buffer.from_settings()
        command = options["subcommand"]
        if command == "stats":
            self._stats(buffer)
        elif command == "recount":
            for shard in range(buffer.shards):
                before, after = buffer.recount(shard)
                self.stdout.write(f"shard {shard}: queued {before} -> {after}")
        elif command == "stuck":
            self._stuck(options["kind"], options["env_id"])
        elif command == "redrive":
            if options["run_ids"]:
                if options["limit"] is not None:
                    raise CommandError("--limit goes with --env or --all, not --run")
                targets = _targets(None, options["run_ids"])
                self._done("redrive", repair.redrive_selected(buffer, targets, now_ms=now_ms()))
            else:
                env_id = options["env_id"]
                scope = "every env" if env_id is None else f"env {env_id}"
                done = repair.redrive(buffer, now_ms=now_ms(), env_id=env_id, limit=options["limit"])
                self._done(f"redrive every dead letter of {scope}", done)
        elif command in ("requeue", "fail"):
            targets = _targets(options["env_id"], options["run_ids"])
            if command == "requeue":
                self._done("requeue", repair.requeue_now(buffer, targets, now_ms=now_ms()))
            else:
                limits = DrainLimits.from_settings(settings.MOLLIFIER)
                self._done("fail", repair.fail(buffer, targets, now_ms=now_ms(), limits=limits))
        elif command in ("pause", "resume"):
            org_id, env_id = _org_and_env(options["org_id"], options["env_id"])
            changed = (buffer.pause if command == "pause" else buffer.resume)(org_id=org_id, env_id=env_id)
            what = f"env {env_id}" if env_id is not None else f"org {org_id}"
            self.stdout.write(f"{what} {command}d" if changed else f"{what} was already {command}d")
        else:  # close / open
            org_id, env_id = _org_and_env(None, options["env_id"])
            assert env_id is not None
            switch = buffer.close_intake if command == "close" else buffer.open_intake
            changed = switch(org_id=org_id, env_id=env_id)
            state = "closed" if command == "close" else "open"
            self.stdout.write(f"env {env_id} intake {state}" if changed else f"env {env_id} intake was already {state}")

    def _done(self, action: str, done: repair.Repaired) -> None:
        self.stdout.write(f"{action}: {repair.describe(done)}")

    def _stats(self, buffer: Buffer) -> None:
        now = now_ms()
        shards = dashboard.rows(
            buffer.shard_stats(now_ms=now), buffer.circuits_until_ms(), now_ms=now,
            stale_cap=settings.MOLLIFIER.SWEEP_MAX_ENTRIES_PER_ENV,
        )  # fmt: skip
        rows = [
            [r.shard, r.stats.queued, r.stats.leased, r.stats.retrying, r.stats.dead, r.stale_text, r.oldest_text,
             f"{r.rate:.1f}/s", r.eta_text, r.circuit_text]
            for r in shards
        ]  # fmt: skip
        self._table(
            ["shard", "queued", "leased", "retrying", "dead", "stale", "oldest", "rate", "eta", "circuit"], rows
        )

    def _stuck(self, kind: str | None, env_id: int | None) -> None:
        rows = StuckEntry.objects.filter(resolved_at__isnull=True).order_by("accepted_at")
        if kind:
            rows = rows.filter(kind=kind)
        if env_id is not None:
            rows = rows.filter(env_id=env_id)
        self._table(
            ["run", "kind", "org", "env", "accepted", "attempts", "last error"],
            [[r.run_id, r.kind, r.org_id, r.env_id, r.accepted_at.isoformat(timespec="seconds"), r.attempts,
              r.last_error[:60]] for r in rows[:STUCK_LIMIT]],
        )  # fmt: skip

    def _table(self, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
        widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
        for row in cells:
            self.stdout.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if not rows:
            self.stdout.write("(none)")


def _org_and_env(org_id: int | None, env_id: int | None) -> tuple[int, int | None]:
    if env_id is None:
        assert org_id is not None
        return org_id, None
    org = Environment.objects.filter(id=env_id).values_list("org_id", flat=True).first()
    if org is None:
        raise CommandError(f"--env {env_id}: no such environment")
    return org, env_id


def _targets(env_id: int | None, run_ids: Sequence[str]) -> list[StuckEntry]:
    if env_id is None and not run_ids:
        raise CommandError("say which entries: --env ID or --run ID …")
    rows = StuckEntry.objects.filter(resolved_at__isnull=True)
    if env_id is not None:
        rows = rows.filter(env_id=env_id)
    if run_ids:
        rows = rows.filter(run_id__in=run_ids)
        missing = set(run_ids) - set(rows.values_list("run_id", flat=True))
        if missing:
            raise CommandError(f"--run: no open stuck entry for {', '.join(sorted(missing))}")
    return list(rows)
