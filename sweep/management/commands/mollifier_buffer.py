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
  pause --env ENV | --org ORG             stop draining (entries keep being accepted)
  resume --env ENV | --org ORG
  close --env ENV / open --env ENV        refuse (429) / accept an env's triggers again

For the switches ENV is an id or ``org-slug/env-slug`` and ORG an id or a slug (``sweep.steer``, the same
service as the admin's buttons).

Every subcommand that changes something takes ``--as NAME`` (default: the OS user) and ``--reason TEXT``,
and is recorded in the audit trail (``sweep.audit``: a row and a log line, docs/runbook.md#audit).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from buffer.buffer import Buffer
from drainer.limits import DrainLimits
from mollifier_project.clock import now_ms
from sweep import audit, dashboard, repair, steer
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
            which.add_argument("--env", dest="env", help="an env id or org-slug/env-slug")
            which.add_argument("--org", dest="org", help="an org id or slug: every env of the org")
        for name in ("close", "open"):
            sub.add_parser(name, help=f"{name} an env's intake").add_argument(
                "--env", dest="env", required=True, help="an env id or org-slug/env-slug"
            )
        for name, acting in sub.choices.items():
            if name not in ("stats", "stuck"):
                acting.add_argument("--as", dest="as_user", help="who acts, for the audit trail (default: the OS user)")
                acting.add_argument("--reason", default="", help="why, for the audit trail")

    def handle(self, *args: Any, **options: Any) -> None:
        buffer = Buffer.from_settings()
        command = options["subcommand"]
        self._who = (options.get("as_user") or "").strip() or audit.os_user()
        self._reason = options.get("reason", "")
        if command == "stats":
            self._stats(buffer)
        elif command == "recount":
            fixed = 0
            for shard in range(buffer.shards):
                before, after = buffer.recount(shard)
                fixed += before != after
                self.stdout.write(f"shard {shard}: queued {before} -> {after}")
            self._record("recount", audit.Scope(), {"shards": buffer.shards, "changed": fixed})
        elif command == "stuck":
            self._stuck(options["kind"], options["env_id"])
        elif command == "redrive":
            if options["run_ids"]:
                if options["limit"] is not None:
                    raise CommandError("--limit goes with --env or --all, not --run")
                targets = _targets(None, options["run_ids"])
                self._done(
                    "redrive", repair.redrive_selected(buffer, targets, now_ms=now_ms()), audit.Scope.of(targets)
                )
            else:
                env_id = options["env_id"]
                scope = "every env" if env_id is None else f"env {env_id}"
                done = repair.redrive(buffer, now_ms=now_ms(), env_id=env_id, limit=options["limit"])
                where = audit.Scope(env_ids=(env_id,) if env_id is not None else ())
                self._done(
                    f"redrive every dead letter of {scope}", done, where, action_name="redrive every dead letter"
                )
        elif command in ("requeue", "fail"):
            targets = _targets(options["env_id"], options["run_ids"])
            if command == "requeue":
                self._done("requeue", repair.requeue_now(buffer, targets, now_ms=now_ms()), audit.Scope.of(targets))
            else:
                limits = DrainLimits.from_settings(settings.MOLLIFIER)
                self._done(
                    "fail", repair.fail(buffer, targets, now_ms=now_ms(), limits=limits), audit.Scope.of(targets)
                )
        else:  # pause / resume / close / open
            try:
                which = steer.parse_env(options["env"]) if options.get("env") else steer.parse_org(options["org"])
            except steer.UnknownScope as exc:
                raise CommandError(f"--{'env' if options.get('env') else 'org'}: {exc}") from None
            self.stdout.write(
                str(
                    steer.apply(buffer, steer.Action(command), which, user=self._who, source="cli", reason=self._reason)
                )
            )

    def _done(self, action: str, done: repair.Repaired, scope: audit.Scope, *, action_name: str = "") -> None:
        self.stdout.write(f"{action}: {repair.describe(done)}")
        self._record(action_name or action, scope, done)

    def _record(self, action: str, scope: audit.Scope, counts: repair.Repaired | dict[str, int]) -> None:
        audit.record(user=self._who, action=action, source="cli", scope=scope, counts=counts, reason=self._reason)

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
