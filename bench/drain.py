"""How fast buffered triggers become rows through the real drain: a Celery worker and beat, end to end.

    python -m bench.drain --runs 100000 --envs 10 [--orgs N] [--per-entry 5000] [--repeat 3]
                          [--concurrency 2] [--set ROUND_BUDGET=2000 ...]

Three measurements, interleaved ``--repeat`` times (drift hits all alike) on an emptied run table,
reported as medians:

(a) ``drain``: ``--runs`` snapshots (≈200-byte payload, 2 tags, an idempotency key on half; the
    ``bench.materialise`` builder) spread round robin over ``--envs`` envs of ``--orgs`` enrolled orgs,
    parked with the ``accept`` script in pipelined batches while every shard's drain lock is held by
    the benchmark. Then ``celery worker`` (prefork, ``--concurrency``, queue ``drain``) and ``celery
    beat`` start with ``MOLLIFIER_DRAINER_ENABLED=true``; once both are up the locks are released and
    the clock runs until the buffer is empty (the drain acks only after its commit, so empty means
    every row exists — checked afterwards: exactly ``--runs`` rows, all ``buffered``, all PENDING).
    Reported from the first round (the earliest ``materialised_at``, the drainer's own clock) to the
    last ack; the table also shows the time from the release, which adds the wait for beat's tick.
(b) ``copy-staging``: the same rows, built before the clock starts, written the way
    ``engine.materialise_many`` writes them — binary COPY into a temp staging table and one
    ``INSERT … SELECT … ORDER BY ord ON CONFLICT DO NOTHING RETURNING id`` per ``ROUND_BUDGET`` rows,
    one transaction each — with no Redis, no parsing, no validation: the upper bound for (a).
(c) ``per-entry``: the naive replay on ``--per-entry`` fresh snapshots: lease one entry, ``engine.trigger``
    it, ack it, round robin over the envs.

``--compare DIR`` measures (a) a second time per repeat with the worker and beat started from another tree
(an export of an earlier commit, say: ``git archive <commit> | tar -x -C DIR``, with ``DIR/.venv`` linked),
interleaved with this tree's, so a change to the drain is measured before and after in one run, under the
same load. ``--profile DIR`` records the worker's processes with py-spy during this tree's drains (collapsed
stacks, ``bench.profile``) and prints where their samples went; py-spy's own CPU then slows this tree's
drains only (measured 0.73× on a loaded 2-core box), so read ``--compare`` ratios from a run without it. ``--per-entry 0`` skips (c).

The fill and the processes' start-up are not timed. A ``CPU per drained row`` line (Linux) splits the CPU
spent during the drain between the worker, beat, the Postgres backends of the benchmark database, the
Redis server and everything else on the machine — on a 2-core box, 2 s of CPU per second divided by the
first four is the ceiling for (a). The last line is machine-readable:
``drain_rows_per_s=<n> vs_copy=<ratio> vs_per_entry=<ratio>`` (ratios of rows/s). Runs against
``<DATABASE_URL database>_bench`` (created and migrated on first use) with a key prefix of its own,
the Celery broker on ``--broker`` (db 10 by default); processes and keys are removed at the end.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import profile as bench_profile
from bench._django import Measurement, add_worker_arguments, parse_settings, setup_django


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100_000, help="buffered runs drained by the worker")
    parser.add_argument("--envs", type=int, default=10, help="environments the runs are spread over")
    parser.add_argument("--orgs", type=int, default=None, help="orgs the envs are spread over (default: one per env)")
    parser.add_argument("--per-entry", type=int, default=5000, help="runs for the one-at-a-time replay (0: skip it)")
    parser.add_argument("--repeat", type=int, default=3, help="measurements per method; medians are reported")
    add_worker_arguments(parser)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one drain may take before giving up")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--compare",
        type=Path,
        default=None,
        metavar="DIR",
        help="also drain with the worker started from the project tree DIR, interleaved",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="py-spy the worker's processes during this tree's drains; collapsed stacks go to DIR",
    )
    args = parser.parse_args(argv)
    args.orgs = args.orgs or args.envs
    for name in ("runs", "envs", "orgs", "repeat", "concurrency"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.per_entry < 0:
        parser.error("--per-entry must be 0 or more")
    if args.compare is not None and not (args.compare / "mollifier_project").is_dir():
        parser.error(f"--compare {args.compare}: not a project tree (no mollifier_project/ in it)")
    if args.orgs > args.envs:
        parser.error("--orgs cannot exceed --envs (every org needs an env)")
    args.settings = parse_settings(parser, args.set)
    return args


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for name, value in args.settings.items():  # this process parses them too: a bad value fails here, named
        os.environ[f"MOLLIFIER_{name}"] = value
    url = setup_django(database=args.database)

    from django.conf import settings
    from django.db import connection, transaction

    from bench import _drainer as support
    from bench.materialise import build_snapshots
    from buffer.buffer import Buffer
    from buffer.client import client_for
    from buffer.keys import shard_for
    from runs import engine, rows
    from runs.models import RunStatus, TaskRun
    from runs.snapshot import from_snapshot

    cfg = settings.MOLLIFIER
    client, scripts = client_for(settings.REDIS_URL)
    envs = support.ensure_tenants("bench-drain", orgs=args.orgs, envs=args.envs)
    now = datetime.now(tz=UTC).replace(microsecond=0)

    def snapshots_for(total: int, seed: int) -> list[Any]:
        groups = [
            build_snapshots(total // len(envs) + (i < total % len(envs)), env_id=env.id, org_id=env.org_id, now=now,
                            seed=seed * 1000 + i)
            for i, env in enumerate(envs)
        ]  # fmt: skip
        return support.interleave(groups)

    drained = snapshots_for(args.runs, args.seed)
    replayed = snapshots_for(args.per_entry, args.seed + 1)
    table = TaskRun._meta.db_table
    copy_rows = [rows.build(s, now=now, buffered=True) for s in drained]  # built before any clock starts
    with connection.cursor() as cur:
        cur.execute("SELECT attname, atttypid FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0", [table])
        oids = dict(cur.fetchall())
    copy_types = [*(oids[c] for c in rows.COLUMNS), 23]
    buffer_shards = {shard_for(e.org_id, cfg.SHARDS) for e in envs}
    worker_env = {f"MOLLIFIER_{name}": value for name, value in args.settings.items()}
    failures: list[str] = []
    trees = [Drains("this tree", support.PROJECT_ROOT, args.concurrency, args.runs)]
    if args.compare is not None:
        trees.append(Drains(str(args.compare), args.compare.resolve(), args.concurrency, args.runs))
    profiles: list[Path] = []

    def check_rows(expected: int, what: str) -> None:
        total = TaskRun.objects.count()
        pending = TaskRun.objects.filter(status=RunStatus.PENDING, buffered=True).count()
        if total != expected or pending != expected:
            failures.append(f"{what}: {total} rows ({pending} buffered PENDING), expected {expected}")

    def run_drain(tree: Drains) -> None:
        prefix = support.unique_prefix("drain")
        buffer = Buffer(client, prefix=prefix, shards=cfg.SHARDS, scripts=scripts)
        celery = support.Celery(
            prefix, worker_env, broker_url=args.broker, concurrency=args.concurrency, root=tree.root
        )
        support.truncate_runs()
        spies: list[subprocess.Popen[bytes]] = []
        try:
            hold = support.ShardHold(buffer)
            support.fill(buffer, drained, now_ms=wall_ms())
            celery.start()
            celery.wait_ready()
            if args.profile is not None and tree is trees[0]:
                label = f"drain{len(profiles)}"
                spies = _spy(celery, args.profile, seconds=int(args.timeout), label=label)
                profiles.extend([args.profile / f"{label}-{pid}.txt" for pid in _pool(celery)])
            meter = support.CpuMeter(celery, database=settings.DATABASES["default"]["NAME"])
            meter.begin()
            released = time.time()
            hold.release()
            deadline = time.monotonic() + args.timeout
            polls = 0
            while support.queued_or_leased(buffer):
                if time.monotonic() > deadline:
                    raise SystemExit(f"drain not done after {args.timeout} s:\n{celery.tail('worker')}")
                polls += 1
                if polls % 5 == 0:
                    meter.poll()
                time.sleep(0.01)
            done = time.time()
            meter.end()
            first = TaskRun.objects.order_by("materialised_at").values_list("materialised_at", flat=True).first()
            errors = celery.errors()
            if errors:
                failures.append(f"drain ({tree.label}): worker/beat logged errors, e.g. {errors[0]}")
        finally:
            for spy in spies:  # SIGINT: py-spy writes what it sampled so far and exits
                spy.send_signal(signal.SIGINT)
            bench_profile.wait(spies, timeout=30)
            celery.stop()
            support.delete_prefix(client, prefix)
        check_rows(args.runs, f"drain ({tree.label})")
        tree.steady.seconds.append(done - first.timestamp())
        tree.from_release.seconds.append(done - released)
        for name, seconds in meter.seconds.items():
            tree.cpu[name] = tree.cpu.get(name, 0.0) + seconds
        tree.cpu_wall.append(done - released)

    def run_copy() -> None:
        support.truncate_runs()
        columns = ", ".join(rows.COLUMNS)
        batch = cfg.ROUND_BUDGET
        started = time.perf_counter()
        for i in range(0, len(copy_rows), batch):
            with transaction.atomic(), connection.cursor() as cur:
                cur.execute(
                    f"CREATE TEMP TABLE IF NOT EXISTS bench_stage (LIKE {table} INCLUDING DEFAULTS, ord integer) "
                    "ON COMMIT DELETE ROWS"
                )
                with cur.cursor.copy(f"COPY bench_stage ({columns}, ord) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(copy_types)
                    for j, row in enumerate(copy_rows[i : i + batch]):
                        copy.write_row((*row, j))
                cur.execute(
                    f"INSERT INTO {table} ({columns}) SELECT {columns} FROM bench_stage ORDER BY ord "
                    "ON CONFLICT DO NOTHING RETURNING id"
                )
                cur.fetchall()
        copy_staging.seconds.append(time.perf_counter() - started)
        check_rows(args.runs, "copy-staging")

    def run_per_entry() -> None:
        prefix = support.unique_prefix("per-entry")
        buffer = Buffer(client, prefix=prefix, shards=cfg.SHARDS, scripts=scripts)
        support.truncate_runs()
        try:
            support.fill(buffer, replayed, now_ms=wall_ms())
            waiting = [(buffer.shard_for(e.org_id), e.org_id, e.id) for e in envs]
            started = time.perf_counter()
            while waiting:
                for shard, org_id, env_id in list(waiting):
                    clock = wall_ms()
                    leased = buffer.lease(shard, org_id=org_id, env_id=env_id, n=1, now_ms=clock, lease_ms=cfg.LEASE_MS)
                    if not leased:
                        waiting.remove((shard, org_id, env_id))
                        continue
                    engine.trigger(from_snapshot(leased[0].snapshot), now=_dt(clock), buffered=True)
                    buffer.ack(shard, [leased[0].run_id], now_ms=clock, grace_ms=cfg.ACK_GRACE_S * 1000)
            per_entry.seconds.append(time.perf_counter() - started)
        finally:
            support.delete_prefix(client, prefix)
        check_rows(args.per_entry, "per-entry")

    copy_staging = Measurement("copy-staging + INSERT … ON CONFLICT", args.runs)
    per_entry = Measurement("per-entry: lease 1, trigger, ack", max(1, args.per_entry))
    methods: list[tuple[Measurement | None, Callable[[], None]]] = [
        *((tree.steady, functools.partial(run_drain, tree)) for tree in trees),
        (copy_staging, run_copy),
        *([(per_entry, run_per_entry)] if args.per_entry else []),
    ]
    overrides = " ".join(f"{k}={v}" for k, v in args.settings.items()) or "defaults"
    print(
        f"database {url.rsplit('/', 1)[-1]}; {args.runs} runs over {args.envs} envs / {args.orgs} orgs in "
        f"{len(buffer_shards)} of {cfg.SHARDS} shards; ROUND_BUDGET {cfg.ROUND_BUDGET}; settings: {overrides}; "
        f"repeat {args.repeat}; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    try:
        for _ in range(args.repeat):
            for _measurement, run in methods:
                run()
    finally:
        support.truncate_runs()
    print(f"load {os.getloadavg()[0]:.2f} at the end")
    print(f"{'method':<38} {'rows':>8} {'seconds':>9} {'rows/s (median)':>16} {'min–max rows/s':>18}")
    shown = [m for tree in trees for m in (tree.steady, tree.from_release)]
    shown += [copy_staging, *([per_entry] if args.per_entry else [])]
    for m in shown:
        spread = f"{min(m.rates):,.0f}–{max(m.rates):,.0f}"
        print(f"{m.method:<38} {m.rows:>8} {m.median_seconds:>9.3f} {m.rows_per_second:>16,.0f} {spread:>18}")
    for tree in trees:
        if tree.cpu:
            drained_rows = args.runs * len(tree.cpu_wall)
            capacity = sum(tree.cpu_wall) * (os.cpu_count() or 1)
            parts = "  ".join(f"{name} {seconds / drained_rows * 1e6:.1f}" for name, seconds in tree.cpu.items())
            print(
                f"CPU per drained row (µs, {tree.label}): {parts}  | total "
                f"{sum(tree.cpu.values()) / drained_rows * 1e6:.1f}; "
                f"machine busy {100 * sum(tree.cpu.values()) / capacity:.0f}% during the drain"
            )
    if profiles:
        print(f"py-spy of the worker's processes during this tree's drains ({args.profile}):")
        print(bench_profile.summarise([p for p in profiles if p.exists()], top=25))
    for failure in failures:
        print(f"!! {failure}")
    if len(trees) > 1:
        base, this = trees[1].steady.rows_per_second, trees[0].steady.rows_per_second
        print(f"this tree ÷ {trees[1].label}: {this / base:.2f} (drain rows/s, medians of the same run)")
    rate = trees[0].steady.rows_per_second
    line = f"drain_rows_per_s={rate:.0f} vs_copy={rate / copy_staging.rows_per_second:.2f}"
    if len(trees) > 1:
        line += f" compared_vs_copy={trees[1].steady.rows_per_second / copy_staging.rows_per_second:.2f}"
    if args.per_entry:
        line += f" vs_per_entry={rate / per_entry.rows_per_second:.2f}"
    print(line)
    return 1 if failures else 0


@dataclass
class Drains:
    """The drain measured with the worker started from one project tree (``--compare``: two of them)."""

    label: str
    root: Path
    concurrency: int
    runs: int
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per process group, summed over repeats
    cpu_wall: list[float] = field(default_factory=list)
    steady: Measurement = field(init=False)
    from_release: Measurement = field(init=False)

    def __post_init__(self) -> None:
        suffix = "" if self.label == "this tree" else f" [{self.label}]"
        self.steady = Measurement(f"drain: worker ×{self.concurrency} + beat{suffix}", self.runs)
        self.from_release = Measurement("  (from lock release)", self.runs)


def _pool(celery: Any) -> list[int]:
    """The worker's pool processes (prefork children), else the worker itself (solo pool)."""
    from bench import _drainer as support

    worker = celery.processes["worker"].pid
    return support.children(worker) or [worker]


def _spy(celery: Any, out_dir: Path, *, seconds: int, label: str) -> list[subprocess.Popen[bytes]]:
    return bench_profile.start(
        bench_profile.require_py_spy(), _pool(celery), seconds=seconds, out_dir=out_dir, label=label
    )


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


if __name__ == "__main__":
    sys.exit(main())
