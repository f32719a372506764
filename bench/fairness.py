"""Is the drain fair under load? Light tenants' latency behind a heavy backlog, and Jain's index over equal orgs.

    python -m bench.fairness [--heavy 100000] [--light-envs 9] [--light-rate 50] [--seconds 10]
                             [--orgs 10] [--backlog 60000] [--window 20] [--concurrency 2] [--set NAME=VALUE ...]
                             [--only latency|jain]

Both parts run a real ``celery worker`` (prefork, ``--concurrency``) and ``celery beat`` with
``MOLLIFIER_DRAINER_ENABLED=true`` against ``<DATABASE_URL database>_bench`` (``bench._django``), a key
prefix of their own and the broker on ``--broker``; backlogs are parked while the benchmark holds every
shard's drain lock, so the drain starts on a full buffer the moment the locks are released.

(1) Latency. One env of a heavy org has ``--heavy`` queued entries; ``--light-envs`` envs of other orgs
    trigger at ``--light-rate`` per second each (``Buffer.accept``, as the trigger path parks a mollified
    run) for ``--seconds``. A light run's latency is from just before its accept to the moment its entry
    is ACKED — the drain acks only after the commit, so that is when its row exists (polled every 20 ms
    in Redis, so the resolution is ≈20 ms). ``materialised_at`` − accept time is shown as a cross-check
    (it is the round's start, so it reads a little low). The heavy backlog left when the light triggers
    stop shows they competed with it all along.
(2) Fairness. ``--orgs`` orgs (one env each) with ``--backlog`` queued entries each; the rows written
    per org are counted over ``--window`` seconds once draining has begun, and Jain's index is
    (Σx)² / (n·Σx²) — 1.0 when every org got the same. Every org must still have a backlog at the end of
    the window (else the demand was not equal and the run says so). Within a shard the rounds split
    evenly; across shards the share moves in whole shard tasks (up to ``DRAIN_TIME_BUDGET_MS`` each), so
    the window must span several fan-out rotations (10 busy shards ÷ 2 processes × 2 s ≈ 10 s): 20 s by
    default. The backlog entries are minimal snapshots (only their count matters here).

The last line is machine-readable: ``light_p50_ms=<x> light_p99_ms=<y> jain=<z>``.
"""

from __future__ import annotations

import argparse
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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heavy", type=int, default=100_000, help="entries queued for the heavy env")
    parser.add_argument("--light-envs", type=int, default=9, help="light envs, each in an org of its own")
    parser.add_argument("--light-rate", type=float, default=50.0, help="triggers per second per light env")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long the light envs trigger")
    parser.add_argument("--orgs", type=int, default=10, help="orgs with equal demand for Jain's index")
    parser.add_argument("--backlog", type=int, default=60_000, help="entries queued per org for Jain's index")
    parser.add_argument("--window", type=float, default=20.0, help="seconds over which rows per org are counted")
    add_worker_arguments(parser)
    parser.add_argument("--only", choices=("latency", "jain"), default=None, help="run one part only")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    for name in ("heavy", "light_envs", "orgs", "backlog", "concurrency"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("light_rate", "seconds", "window"):
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

    def __post_init__(self) -> None:
        threading.Thread.__init__(self, name="light-triggers", daemon=True)
        self.lock = threading.Lock()

    def run(self) -> None:
        from runs.ids import new_run_id
        from runs.snapshot import Snapshot, to_snapshot

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
                            now_ms=now, idempotency=None, max_per_env=10**9,
                        )  # fmt: skip
                        if result.status != "ACCEPTED":
                            raise RuntimeError(f"light trigger not accepted: {result}")
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
    light = LightTriggers(buffer, light_envs, args.light_rate, args.seconds)
    done_at: dict[str, int] = {}
    heavy_left = None
    try:
        hold = support.ShardHold(buffer)
        heavy = build_snapshots(args.heavy, env_id=heavy_env.id, org_id=heavy_env.org_id, now=now, seed=args.seed)
        support.fill(buffer, heavy, now_ms=wall_ms())
        del heavy
        celery = ctx.start_drain(prefix)
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
    }


def measure_jain(ctx: Context) -> dict[str, Any]:
    """Part (2): rows per org over a window while every org has the same, ample backlog."""
    from django.db.models import Count

    from bench import _drainer as support
    from runs.models import TaskRun

    args = ctx.args
    envs = support.ensure_tenants("bench-fair-jain", orgs=args.orgs, envs=args.orgs)
    org_ids = [env.org_id for env in envs]
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
        for env in envs:
            support.fill(buffer, support.small_snapshots(env, args.backlog, now_ms=wall_ms()), now_ms=wall_ms())
        celery = ctx.start_drain(prefix)
        hold.release()
        while not TaskRun.objects.exists():
            time.sleep(0.01)
        before = counts()
        time.sleep(args.window)
        after = counts()
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
        ctx.failures.append(f"jain: orgs {dry} ran out of backlog inside the window; demand was not equal")
    return {
        "per_org": [(org, buffer.shard_for(org), drained[org], left[org]) for org in org_ids],
        "jain": jain(list(drained.values())),
        "rate": sum(drained.values()) / args.window,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for name, value in args.settings.items():  # this process parses them too: a bad value fails here, named
        os.environ[f"MOLLIFIER_{name}"] = value
    url = setup_django(database=args.database)

    from django.conf import settings

    from buffer.buffer import client_for

    client, scripts = client_for(settings.REDIS_URL)
    ctx = Context(args, settings.MOLLIFIER, client, scripts)
    cfg = ctx.cfg
    print(
        f"database {url.rsplit('/', 1)[-1]}; SHARDS {cfg.SHARDS}; ROUND_BUDGET {cfg.ROUND_BUDGET}; "
        f"DRAIN_TIME_BUDGET_MS {cfg.DRAIN_TIME_BUDGET_MS}; DRAIN_INTERVAL_S {cfg.DRAIN_INTERVAL_S}; "
        f"worker ×{args.concurrency} + beat; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    lat = measure_latency(ctx) if args.only in (None, "latency") else None
    fair = measure_jain(ctx) if args.only in (None, "jain") else None

    if lat:
        print(f"{'light envs: trigger → row':<46} {'value':>12}")
        print(f"{'  triggers (envs × rate × seconds)':<46} {lat['triggers']:>12,}")
        print(f"{'  p50 ms (accept → ACKED, polled every 20 ms)':<46} {lat['p50']:>12.0f}")
        print(f"{'  p99 ms':<46} {lat['p99']:>12.0f}")
        print(f"{'  max ms':<46} {lat['max']:>12.0f}")
        print(f"{'  p50 / p99 ms by materialised_at':<46} {lat['picked_p50']:>5.0f} / {lat['picked_p99']:>4.0f}")
        print(f"{'  heavy backlog left when they stopped':<46} {lat['heavy_left']:>12,} of {args.heavy:,}")
    if fair:
        print(f"{'equal orgs: rows per org':<46} {f'{args.window:g} s window':>12}")
        for org, shard, n, left in fair["per_org"]:
            print(f"  org {org:<7} shard {shard:<3} {n:>10,} rows {n / args.window:>8,.0f}/s {left:>8,} left")
        print(f"{'  all orgs, rows/s':<46} {fair['rate']:>12,.0f}")
        print(f"{'  Jain index':<46} {fair['jain']:>12.4f}")
    for failure in ctx.failures:
        print(f"!! {failure}")
    parts = []
    if lat:
        parts += [f"light_p50_ms={lat['p50']:.0f}", f"light_p99_ms={lat['p99']:.0f}"]
    if fair:
        parts.append(f"jain={fair['jain']:.4f}")
    print(" ".join(parts))
    return 1 if ctx.failures else 0


if __name__ == "__main__":
    sys.exit(main())
