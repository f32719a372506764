"""Is the drain fair under load? Light tenants' latency behind a heavy backlog, and Jain's index over equal orgs.

    python -m bench.fairness [--heavy 100000] [--light-envs 9] [--light-rate 50] [--seconds 10]
                             [--orgs 10] [--window 20] [--calibration-backlog 30000] [--safety 3] [--backlog N]
                             [--idle-seconds 10] [--concurrency 2] [--set NAME=VALUE ...]
                             [--only latency|jain|idle]

Both parts run a real ``celery worker`` (prefork, ``--concurrency``) and ``celery beat`` with
``MOLLIFIER_DRAINER_ENABLED=true`` against ``<DATABASE_URL database>_bench`` (``bench._django``), a key
prefix of their own and the broker on ``--broker``; backlogs are parked while the benchmark holds every
shard's drain lock, so the drain starts on a full buffer the moment the locks are released.

(1) Latency. One env of a heavy org has ``--heavy`` queued entries; ``--light-envs`` envs of other orgs
    trigger at ``--light-rate`` per second each (``Buffer.accept``, as the trigger path parks a mollified
    run, kicking the shard's drain with ``DRAIN_KICK`` on) for ``--seconds``. A light run's latency is from just before its accept to the moment its entry
    is ACKED — the drain acks only after the commit, so that is when its row exists (polled every 20 ms
    in Redis, so the resolution is ≈20 ms). ``materialised_at`` − accept time is shown as a cross-check
    (it is the round's start, so it reads a little low). The heavy backlog left when the light triggers
    stop shows they competed with it all along.
(2) Fairness. ``--orgs`` orgs (one env each) with equal backlogs; the rows written per org are counted
    over ``--window`` seconds once draining has begun, and Jain's index is (Σx)² / (n·Σx²) — 1.0 when
    every org got the same. It only means something under equal demand: every org must have a backlog
    from the first to the last moment of the window, and how big that must be depends on how fast this
    machine drains. So the run measures that first (``calibrate``): one org per worker process, on
    distinct shards, with ``--calibration-backlog`` entries each, drained by a worker of its own; the
    rate R is the rows written from the first row until a queue runs dry (at most ``CALIBRATE_S``).
    Each org then gets ``--safety`` × its fair share of the window, ⌈safety × R / orgs × window⌉
    entries (but no more than 1.5 × one process's share R / processes × window, the most one shard
    can drain) — ``--backlog N`` sets the figure instead — parked before that drain starts. An org
    whose queue is empty at the end of the window ran out inside it: the Jain figure is then reported
    as INVALID and the run exits with status 1. Within a shard the rounds split evenly; across shards
    the share moves in whole shard tasks (up to ``DRAIN_TIME_BUDGET_MS`` each), so the window must span
    several fan-out rotations (10 busy shards ÷ 2 processes × 2 s ≈ 10 s): 20 s by default. The
    backlog entries are minimal snapshots (only their count matters here).

(3) Idle cost. The same worker and beat on an empty buffer for ``--idle-seconds``: the fan-out ticks
    they ran (each one pipelined has-work check of every shard, ``3 × SHARDS`` Redis commands, and no
    Postgres query) and the CPU the worker and beat spent per second — what a short ``DRAIN_INTERVAL_S``
    costs when there is nothing to drain.

Parts (1) and (2) also count the Postgres transactions of the benchmark database (``pg_stat_database``:
commits + rollbacks, every backend, the benchmark's own few reads included) per row written — what the
choice of tick and round size costs Postgres.

The last line is machine-readable: ``light_p50_ms=<x> light_p99_ms=<y> jain=<z> xact_per_row=<t>
idle_cpu_ms_per_s=<c>`` (``jain=invalid`` when an org ran out of backlog inside the window).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._django import add_worker_arguments, parse_settings, setup_django

POLL_S = 0.02
CALIBRATE_S = 5.0  # longest calibration of the drain rate (it stops sooner when a queue runs dry)
FIRST_ROW_TIMEOUT_S = 60.0  # from releasing the shard locks to the first row


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heavy", type=int, default=100_000, help="entries queued for the heavy env")
    parser.add_argument("--light-envs", type=int, default=9, help="light envs, each in an org of its own")
    parser.add_argument("--light-rate", type=float, default=50.0, help="triggers per second per light env")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long the light envs trigger")
    parser.add_argument("--orgs", type=int, default=10, help="orgs with equal demand for Jain's index")
    parser.add_argument("--window", type=float, default=20.0, help="seconds over which rows per org are counted")
    parser.add_argument(
        "--calibration-backlog", type=int, default=30_000,
        help="entries parked per calibration org (one per worker process) to measure the drain rate",
    )  # fmt: skip
    parser.add_argument(
        "--safety", type=float, default=3.0,
        help="backlog per org at the window's start, in multiples of its fair share of the measured rate",
    )  # fmt: skip
    parser.add_argument(
        "--backlog", type=int, default=None,
        help="backlog per org at the window's start (default: sized from the measured drain rate)",
    )  # fmt: skip
    add_worker_arguments(parser)
    parser.add_argument("--idle-seconds", type=float, default=10.0, help="how long the idle part watches")
    parser.add_argument("--only", choices=("latency", "jain", "idle"), default=None, help="run one part only")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    for name in ("heavy", "light_envs", "orgs", "calibration_backlog", "concurrency"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.backlog is not None and args.backlog < 1:
        parser.error("--backlog must be at least 1")
    if args.safety < 1:
        parser.error("--safety must be at least 1")
    for name in ("light_rate", "seconds", "window", "idle_seconds"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    args.settings = parse_settings(parser, args.set)
    return args


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0–100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def transactions() -> int:
    """Commits + rollbacks so far in the benchmark database, every backend (``pg_stat_database``; the
    statistics collector may lag by a moment, so read it after the drain has settled)."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SELECT pg_stat_clear_snapshot()")
        cur.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()")
        return int(cur.fetchone()[0])


def jain(values: Sequence[float]) -> float:
    """Jain's fairness index: 1.0 when all equal, 1/n when one gets everything."""
    total = sum(values)
    squares = sum(v * v for v in values)
    return total * total / (len(values) * squares) if squares else 1.0


@dataclass(eq=False)  # a Thread must stay hashable
class LightTriggers(threading.Thread):
    """Triggers for the light envs at a steady rate, each parked with ``Buffer.accept``; records when."""

    buffer: Any
    envs: list[Any]
    rate: float
    seconds: float
    accepted: dict[str, tuple[int, int]] = field(default_factory=dict)  # run id → (accept ms, org id)
    error: BaseException | None = None
    cfg: Any = None  # the settings: with DRAIN_KICK on, an accept into an idle shard kicks (as the trigger path)

    def __post_init__(self) -> None:
        threading.Thread.__init__(self, name="light-triggers", daemon=True)
        self.lock = threading.Lock()

    def run(self) -> None:
        from runs import kick
        from runs.ids import new_run_id
        from runs.snapshot import Snapshot, to_snapshot

        kick_ttl_ms = kick.mark_ttl_ms(self.cfg) if self.cfg is not None else None

        try:
            start = time.monotonic()
            sent = 0
            while (elapsed := time.monotonic() - start) < self.seconds:
                due = int(elapsed * self.rate) + 1  # per env, so far
                while sent < due:
                    for env in self.envs:
                        now = wall_ms()
                        run_id = new_run_id(now)
                        snapshot = Snapshot(
                            id=run_id, env_id=env.id, org_id=env.org_id, task_identifier="light-task",
                            created_at=datetime.fromtimestamp(now / 1000, tz=UTC), payload='{"json":{"light":true}}',
                        )  # fmt: skip
                        result = self.buffer.accept(
                            run_id=run_id, env_id=env.id, org_id=env.org_id, snapshot=to_snapshot(snapshot),
                            now_ms=now, idempotency=None, max_per_env=10**9, kick_ttl_ms=kick_ttl_ms,
                        )  # fmt: skip
                        if result.status != "ACCEPTED":
                            raise RuntimeError(f"light trigger not accepted: {result}")
                        if result.kicked:
                            kick.send(self.buffer, org_id=env.org_id, cfg=self.cfg)
                        with self.lock:
                            self.accepted[run_id] = (now, env.org_id)
                    sent += 1
                time.sleep(max(0.0, start + sent / self.rate - time.monotonic()))
        except BaseException as exc:  # reported by the main thread
            self.error = exc


@dataclass
class Context:
    """What both parts share: settings, the Redis client, and how to start the drain."""

    args: argparse.Namespace
    cfg: Any
    client: Any
    scripts: Any
    failures: list[str] = field(default_factory=list)

    def buffer(self, prefix: str) -> Any:
        from buffer.buffer import Buffer

        return Buffer(self.client, prefix=prefix, shards=self.cfg.SHARDS, scripts=self.scripts)

    def start_drain(self, prefix: str) -> Any:
        from bench import _drainer as support

        worker_env = {f"MOLLIFIER_{name}": value for name, value in self.args.settings.items()}
        celery = support.Celery(prefix, worker_env, broker_url=self.args.broker, concurrency=self.args.concurrency)
        celery.start()
        celery.wait_ready()
        return celery

    def check_logs(self, celery: Any, part: str) -> None:
        errors = celery.errors()
        if errors:
            self.failures.append(f"{part}: worker/beat logged errors, e.g. {errors[0]}")


def measure_latency(ctx: Context) -> dict[str, Any]:
    """Part (1): light envs triggering steadily while a heavy env's backlog drains."""
    from bench import _drainer as support
    from bench.materialise import build_snapshots
    from runs.models import TaskRun

    args = ctx.args
    heavy_env, *light_envs = support.ensure_tenants(
        "bench-fair-lat", orgs=1 + args.light_envs, envs=1 + args.light_envs
    )
    prefix = support.unique_prefix("fair-lat")
    buffer = ctx.buffer(prefix)
    support.truncate_runs()
    now = datetime.now(tz=UTC).replace(microsecond=0)
    celery = None
    light = LightTriggers(buffer, light_envs, args.light_rate, args.seconds, cfg=ctx.cfg)
    done_at: dict[str, int] = {}
    heavy_left = None
    try:
        hold = support.ShardHold(buffer)
        heavy = build_snapshots(args.heavy, env_id=heavy_env.id, org_id=heavy_env.org_id, now=now, seed=args.seed)
        support.fill(buffer, heavy, now_ms=wall_ms())
        del heavy
        celery = ctx.start_drain(prefix)
        xact_before = transactions()
        hold.release()
        light.start()
        deadline = time.monotonic() + args.seconds + 60
        while light.is_alive() or len(done_at) < len(light.accepted):
            if light.error is not None:
                raise light.error
            if not light.is_alive() and heavy_left is None:
                heavy_left = buffer.depth(buffer.shard_for(heavy_env.org_id), heavy_env.id)
            if time.monotonic() > deadline:
                ctx.failures.append(f"latency: {len(light.accepted) - len(done_at)} light runs not drained in time")
                break
            with light.lock:
                pending = [(run_id, org) for run_id, (_, org) in light.accepted.items() if run_id not in done_at]
            if pending:
                pipe = ctx.client.pipeline(transaction=False)
                for run_id, org in pending:
                    pipe.hget(buffer.keys_for_org(org).entry(run_id), "status")
                seen = wall_ms()
                for (run_id, _), status in zip(pending, pipe.execute(), strict=True):
                    if status == "ACKED":
                        done_at[run_id] = seen
            time.sleep(POLL_S)
        if light.error is not None:
            raise light.error
        ctx.check_logs(celery, "latency")
    finally:
        if celery is not None:
            celery.stop()
        support.delete_prefix(ctx.client, prefix)
    time.sleep(0.6)  # the statistics collector reports a backend's counts up to 500 ms late
    xact = transactions() - xact_before
    written = TaskRun.objects.count()
    latencies = [done_at[r] - accepted for r, (accepted, _) in light.accepted.items() if r in done_at]
    rows = dict(TaskRun.objects.filter(id__in=list(light.accepted)).values_list("id", "materialised_at"))
    if len(rows) != len(light.accepted):
        ctx.failures.append(f"latency: {len(light.accepted)} light triggers but {len(rows)} rows")
    picked = [rows[r].timestamp() * 1000 - accepted for r, (accepted, _) in light.accepted.items() if r in rows]
    support.truncate_runs()
    return {
        "triggers": len(light.accepted),
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "max": max(latencies),
        "picked_p50": percentile(picked, 50),
        "picked_p99": percentile(picked, 99),
        "heavy_left": heavy_left,
        "rows": written,
        "xact_per_row": xact / written if written else float("nan"),
    }


def calibrate(ctx: Context, envs: Sequence[Any]) -> dict[str, Any]:
    """The drain rate (rows/s) with every worker process busy, measured on this machine, in this run.

    One org per worker process, on distinct shards (a shard is drained by one process at a time), gets
    ``--calibration-backlog`` entries, parked while the shard locks are held; a worker of its own then
    drains them, and the rate is the rows written from the first row until an org's queue runs dry (or
    ``CALIBRATE_S``), so every process had work all along. The window's orgs can keep no more processes
    busy than that, so it is their total rate too.
    """
    from bench import _drainer as support
    from runs.models import TaskRun

    args = ctx.args
    prefix = support.unique_prefix("fair-cal")
    buffer = ctx.buffer(prefix)
    picked: dict[int, Any] = {}  # shard → env
    for env in envs:
        picked.setdefault(buffer.shard_for(env.org_id), env)
    envs = list(picked.values())[: args.concurrency]
    org_ids = [env.org_id for env in envs]
    support.truncate_runs()
    celery = None
    try:
        hold = support.ShardHold(buffer)
        for env in envs:
            support.fill(
                buffer, support.small_snapshots(env, args.calibration_backlog, now_ms=wall_ms()), now_ms=wall_ms()
            )
        celery = ctx.start_drain(prefix)
        hold.release()
        rows = TaskRun.objects.filter(org_id__in=org_ids)
        deadline = time.monotonic() + FIRST_ROW_TIMEOUT_S
        while not rows.exists():
            if time.monotonic() > deadline:
                raise SystemExit(f"jain: calibration wrote no row {FIRST_ROW_TIMEOUT_S:g} s after the drain started")
            time.sleep(0.01)
        start, before = time.monotonic(), rows.count()
        while time.monotonic() - start < CALIBRATE_S and all(
            buffer.depth(buffer.shard_for(env.org_id), env.id) for env in envs
        ):
            time.sleep(POLL_S)
        seconds, written = time.monotonic() - start, rows.count() - before
        ctx.check_logs(celery, "jain calibration")
    finally:
        if celery is not None:
            celery.stop()
        support.delete_prefix(ctx.client, prefix)
        support.truncate_runs()
    if written <= 0:
        raise SystemExit(f"jain: calibration wrote no row in {seconds:.2f} s")
    return {"rate": written / seconds, "seconds": seconds, "processes": len(envs)}


def measure_jain(ctx: Context) -> dict[str, Any]:
    """Part (2): rows per org over a window while every org has the same, ample backlog — sized from the
    drain rate ``calibrate`` measured just before."""
    from django.db.models import Count

    from bench import _drainer as support
    from runs.models import TaskRun

    args = ctx.args
    envs = support.ensure_tenants("bench-fair-jain", orgs=args.orgs, envs=args.orgs)
    org_ids = [env.org_id for env in envs]
    cal = calibrate(ctx, envs)
    rate = cal["rate"]
    if args.backlog is not None:
        backlog = args.backlog
    else:  # an org's fair share of the window, `safety` times over; no org outruns one worker process
        per_org = min(args.safety * rate / args.orgs, 1.5 * rate / cal["processes"])
        backlog = math.ceil(per_org * args.window)
    prefix = support.unique_prefix("fair-jain")
    buffer = ctx.buffer(prefix)
    support.truncate_runs()
    celery = None

    def counts() -> dict[int, int]:
        rows = TaskRun.objects.filter(org_id__in=org_ids).values("org_id").annotate(n=Count("id"))
        found = {row["org_id"]: row["n"] for row in rows}
        return {org: found.get(org, 0) for org in org_ids}

    try:
        hold = support.ShardHold(buffer)
        fill_start = time.monotonic()
        for env in envs:
            support.fill(buffer, support.small_snapshots(env, backlog, now_ms=wall_ms()), now_ms=wall_ms())
        fill_seconds = time.monotonic() - fill_start
        celery = ctx.start_drain(prefix)
        hold.release()
        deadline = time.monotonic() + FIRST_ROW_TIMEOUT_S
        while not TaskRun.objects.exists():
            if time.monotonic() > deadline:
                raise SystemExit(f"jain: no row written {FIRST_ROW_TIMEOUT_S:g} s after the drain started")
            time.sleep(0.01)
        before, xact_before = counts(), transactions()
        time.sleep(args.window)
        after, xact_after = counts(), transactions()
        left = {env.org_id: buffer.depth(buffer.shard_for(env.org_id), env.id) for env in envs}
        ctx.check_logs(celery, "jain")
    finally:
        if celery is not None:
            celery.stop()
        support.delete_prefix(ctx.client, prefix)
        support.truncate_runs()
    drained = {org: after[org] - before[org] for org in org_ids}
    dry = [org for org in org_ids if left[org] == 0]
    if dry:
        ctx.failures.append(
            f"jain: orgs {dry} ran out of backlog inside the window, so demand was not equal and the Jain "
            f"index is INVALID (backlog {backlog:,} per org from {rate:,.0f} rows/s; raise --safety or --backlog)"
        )
    return {
        "per_org": [(org, buffer.shard_for(org), drained[org], left[org]) for org in org_ids],
        "jain": jain(list(drained.values())),
        "valid": not dry,
        "rate": sum(drained.values()) / args.window,
        "calibration": cal,
        "backlog": backlog,
        "sized": args.backlog is None,
        "fill_seconds": fill_seconds,
        "xact_per_row": (xact_after - xact_before) / max(1, sum(drained.values())),
    }


def measure_idle(ctx: Context) -> dict[str, Any]:
    """Part (3): worker and beat on an empty buffer — the fan-out ticks they ran and the CPU they spent."""
    from bench import _drainer as support

    args = ctx.args
    prefix = support.unique_prefix("fair-idle")
    celery = ctx.start_drain(prefix)
    try:
        time.sleep(1.0)  # past start-up
        pids = {"worker": celery.processes["worker"].pid, "beat": celery.processes["beat"].pid}

        def cpu() -> float:
            return sum(support.cpu_seconds(p) for pid in pids.values() for p in [pid, *support.children(pid)])

        ticks_before, xact_before, cpu_before = _fan_outs(celery), transactions(), cpu()
        time.sleep(args.idle_seconds)
        ticks, spent = _fan_outs(celery) - ticks_before, cpu() - cpu_before
        xact = transactions() - xact_before
        ctx.check_logs(celery, "idle")
    finally:
        celery.stop()
        support.delete_prefix(ctx.client, prefix)
    return {
        "ticks_per_s": ticks / args.idle_seconds,
        "cpu_ms_per_s": 1000 * spent / args.idle_seconds,
        "redis_per_tick": 3 * ctx.cfg.SHARDS,
        "xact_per_s": xact / args.idle_seconds,
    }


def _fan_outs(celery: Any) -> int:
    """Fan-out ticks the worker ran so far (its INFO line per task that succeeded)."""
    return sum(1 for line in celery.log("worker").splitlines() if "drainer.fan_out" in line and "succeeded" in line)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for name, value in args.settings.items():  # this process parses them too: a bad value fails here, named
        os.environ[f"MOLLIFIER_{name}"] = value
    url = setup_django(database=args.database)

    from django.conf import settings

    from buffer.client import client_for

    client, scripts = client_for(settings.REDIS_URL)
    from mollifier_project.celery import app

    app.conf.broker_url = args.broker  # this process's kicks (DRAIN_KICK) go to the worker's broker
    ctx = Context(args, settings.MOLLIFIER, client, scripts)
    cfg = ctx.cfg
    print(
        f"database {url.rsplit('/', 1)[-1]}; SHARDS {cfg.SHARDS}; ROUND_BUDGET {cfg.ROUND_BUDGET}; "
        f"DRAIN_TIME_BUDGET_MS {cfg.DRAIN_TIME_BUDGET_MS}; DRAIN_INTERVAL_S {cfg.DRAIN_INTERVAL_S}; "
        f"DRAIN_KICK {cfg.DRAIN_KICK}; "
        f"worker ×{args.concurrency} + beat; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    lat = measure_latency(ctx) if args.only in (None, "latency") else None
    fair = measure_jain(ctx) if args.only in (None, "jain") else None
    idle = measure_idle(ctx) if args.only in (None, "idle") else None

    if lat:
        print(f"{'light envs: trigger → row':<46} {'value':>12}")
        print(f"{'  triggers (envs × rate × seconds)':<46} {lat['triggers']:>12,}")
        print(f"{'  p50 ms (accept → ACKED, polled every 20 ms)':<46} {lat['p50']:>12.0f}")
        print(f"{'  p99 ms':<46} {lat['p99']:>12.0f}")
        print(f"{'  max ms':<46} {lat['max']:>12.0f}")
        print(f"{'  p50 / p99 ms by materialised_at':<46} {lat['picked_p50']:>5.0f} / {lat['picked_p99']:>4.0f}")
        print(f"{'  heavy backlog left when they stopped':<46} {lat['heavy_left']:>12,} of {args.heavy:,}")
        print(f"{'  Postgres transactions per row':<46} {lat['xact_per_row']:>12.4f} ({lat['rows']:,} rows)")
    if fair:
        cal = fair["calibration"]
        how = f"{args.safety:g} × the fair share × {args.window:g} s" if fair["sized"] else "--backlog"
        print(f"{'equal orgs: calibration, rows/s':<46} {cal['rate']:>12,.0f} "
              f"({cal['processes']} busy shard(s), {cal['seconds']:.2f} s)")  # fmt: skip
        print(f"{'  backlog per org':<46} {fair['backlog']:>12,} ({how}; parked in {fair['fill_seconds']:.1f} s)")
        print(f"{'  rows per org':<46} {f'{args.window:g} s window':>12}")
        for org, shard, n, left in fair["per_org"]:
            print(f"  org {org:<7} shard {shard:<3} {n:>10,} rows {n / args.window:>8,.0f}/s {left:>8,} left")
        print(f"{'  all orgs, rows/s':<46} {fair['rate']:>12,.0f}")
        jain_text = f"{fair['jain']:.4f}" if fair["valid"] else f"{fair['jain']:.4f} INVALID (an org ran dry)"
        print(f"{'  Jain index':<46} {jain_text:>12}")
        print(f"{'  Postgres transactions per row':<46} {fair['xact_per_row']:>12.4f}")
    if idle:
        print(f"{'idle: fan-out ticks per second':<46} {idle['ticks_per_s']:>12.2f} "
              f"({idle['redis_per_tick']} Redis commands in one pipeline each)")  # fmt: skip
        print(f"{'  worker + beat CPU, ms per second':<46} {idle['cpu_ms_per_s']:>12.1f}")
        print(f"{'  Postgres transactions per second':<46} {idle['xact_per_s']:>12.2f}")
    for failure in ctx.failures:
        print(f"!! {failure}")
    parts = []
    if lat:
        parts += [f"light_p50_ms={lat['p50']:.0f}", f"light_p99_ms={lat['p99']:.0f}"]
    if fair:
        parts.append(f"jain={fair['jain']:.4f}" if fair["valid"] else "jain=invalid")
    if lat:
        parts.append(f"xact_per_row={lat['xact_per_row']:.4f}")
    if idle:
        parts.append(f"idle_cpu_ms_per_s={idle['cpu_ms_per_s']:.1f}")
    print(" ".join(parts), flush=True)
    if ctx.failures:
        print(f"bench/fairness.py: FAILED, {len(ctx.failures)} check(s) above (!!)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
