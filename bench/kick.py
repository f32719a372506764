"""Trigger → row latency with the drain kick off (the tick alone) and on, measured in the same run.

    python -m bench.kick [--triggers 40] [--heavy 100000] [--light-envs 9] [--light-rate 50] [--seconds 10]
                         [--idle-seconds 10] [--only quiet|fairness|idle] [--concurrency 2] [--set NAME=VALUE ...]

For ``DRAIN_KICK`` false, then true (docs/architecture.md#kick), with every other setting at its default
(``--set`` changes one for both):

(1) Quiet env. A real gunicorn (``bench.trigger.Server``: 2 workers), a real ``celery worker`` (prefork,
    ``--concurrency``) and ``celery beat`` on an empty buffer; ``--triggers`` single buffered triggers
    (``TRIP_THRESHOLD=0``) over HTTP, one at a time, 0.2–0.6 s apart (random, so they land at every phase
    of the tick), each followed by polling its row in Postgres every 2 ms. Latency: from just before the
    POST to the first poll that sees the row.
(2) ``bench.fairness``'s latency part: light envs triggering behind a ``--heavy`` backlog on another shard
    (their accepts kick as the trigger path's do).
(3) ``bench.fairness``'s idle part: worker + beat CPU per second with nothing to drain.

The table gives each measure for both and the ratio on/off; the last line is machine-readable.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._django import add_worker_arguments, parse_settings, setup_django

POLL_S = 0.002
MODES = ("false", "true")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--triggers", type=int, default=40, help="single triggers in the quiet env, per mode")
    parser.add_argument("--heavy", type=int, default=100_000, help="fairness: entries queued for the heavy env")
    parser.add_argument("--light-envs", type=int, default=9)
    parser.add_argument("--light-rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--only", choices=("quiet", "fairness", "idle"), default=None)
    parser.add_argument("--seed", type=int, default=7)
    add_worker_arguments(parser)
    args = parser.parse_args(argv)
    args.settings = parse_settings(parser, args.set)
    return args


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def task_ms(log: str) -> list[float]:
    """Run times of the worker's ``drain_shard`` tasks, from its "succeeded in <s>s" INFO lines."""
    found = re.findall(r"drainer\.drain_shard\[[^]]*\] succeeded in ([0-9.]+)s", log)
    return [float(seconds) * 1000 for seconds in found]


def quiet(args: argparse.Namespace, kick: str, secret: str) -> dict[str, list[float]]:
    """Part (1) for one mode, in ms per trigger: POST to row (``row``), POST to its answer (``answer``), and
    the drain tasks' run times in the worker (``task``; with the tick alone, also idle shards' empty ones)."""
    from django.conf import settings
    from django.db import connection

    from bench import _drainer as support
    from bench.trigger import SERVER_SETTINGS, Server, server_environment

    prefix = support.unique_prefix("kick-quiet")
    mollifier = {**{f"MOLLIFIER_{k}": v for k, v in args.settings.items()}, "MOLLIFIER_DRAIN_KICK": kick}
    celery = support.Celery(prefix, {**SERVER_SETTINGS, **mollifier}, broker_url=args.broker,
                            concurrency=args.concurrency)  # fmt: skip
    server = None
    latencies: list[float] = []
    answers: list[float] = []
    tasks: list[float] = []
    try:
        celery.start()
        celery.wait_ready()
        env = server_environment(os.environ["DATABASE_URL"], settings.REDIS_URL, prefix)
        env.update(mollifier, MOLLIFIER_DRAINER_ENABLED="true", CELERY_BROKER_URL=args.broker)
        server = Server(env)
        body = json.dumps({"payload": '{"json":{"quiet":true}}'}).encode()

        def post() -> str:
            request = urllib.request.Request(
                f"{server.url}/api/v1/tasks/quiet/trigger", data=body, method="POST",
                headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
            )  # fmt: skip
            with urllib.request.urlopen(request, timeout=10) as response:
                return str(json.load(response)["id"])

        rng = random.Random(args.seed)
        with connection.cursor() as cur:
            for i in range(args.triggers + 3):  # 3 unmeasured: connections, imports, script loads
                time.sleep(rng.uniform(0.2, 0.6))
                started = time.perf_counter()
                run_id = post()
                answered = time.perf_counter()
                deadline = started + 30
                while True:
                    cur.execute("SELECT 1 FROM runs_taskrun WHERE id = %s", [run_id])
                    if cur.fetchone() is not None:
                        break
                    if time.perf_counter() > deadline:
                        raise SystemExit(f"kick={kick}: no row for {run_id} after 30 s:\n{celery.tail('worker')}")
                    time.sleep(POLL_S)
                if i >= 3:
                    latencies.append((time.perf_counter() - started) * 1000)
                    answers.append((answered - started) * 1000)
        tasks = task_ms(celery.log("worker"))
        errors = celery.errors()
        if errors:
            print(f"!! kick={kick}: worker/beat logged errors, e.g. {errors[0]}")
    finally:
        if server is not None:
            server.stop()
        celery.stop()
        support.delete_prefix(support.redis.Redis.from_url(settings.REDIS_URL), prefix)
    return {"row": latencies, "answer": answers, "task": tasks or [float("nan")]}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for name, value in args.settings.items():
        os.environ[f"MOLLIFIER_{name}"] = value
    setup_django(database=args.database)

    from django.conf import settings

    from bench import _drainer as support
    from bench import fairness
    from buffer.client import client_for
    from mollifier_project.celery import app
    from runs.tenants import ensure_tenant, issue_api_key

    app.conf.broker_url = args.broker  # this process's kicks (the fairness part) go to the worker's broker
    base_cfg = settings.MOLLIFIER
    print(
        f"SHARDS {base_cfg.SHARDS}; DRAIN_INTERVAL_S {base_cfg.DRAIN_INTERVAL_S}; DRAIN_TIME_BUDGET_MS "
        f"{base_cfg.DRAIN_TIME_BUDGET_MS}; worker ×{args.concurrency} + beat; {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    rows: list[tuple[str, dict[str, float], str]] = []  # (measure, {mode: value}, aim); a key per measure below
    keys: list[str] = []
    failures: list[str] = []
    if args.only in (None, "quiet"):
        tenant = ensure_tenant(f"bench-kick-{uuid.uuid4().hex[:6]}", "dev", enrol=True)
        secret = issue_api_key(tenant.env)[1]
        support.truncate_runs()
        lat = {mode: quiet(args, mode, secret) for mode in MODES}
        support.truncate_runs()
        rows.append(("quiet env: 1 trigger → row, p50 ms", {m: percentile(lat[m]["row"], 50) for m in MODES}, "≤ 50"))
        rows.append(("quiet env: 1 trigger → row, p99 ms", {m: percentile(lat[m]["row"], 99) for m in MODES}, "≤ 150"))
        rows.append(("  of which the HTTP answer, p50 ms", {m: percentile(lat[m]["answer"], 50) for m in MODES}, ""))
        rows.append(("  a drain task's run in the worker, p50 ms", {m: percentile(lat[m]["task"], 50) for m in MODES},
                     ""))  # fmt: skip
        keys += ["quiet_p50_ms", "quiet_p99_ms", "answer_p50_ms", "task_p50_ms"]
    client, scripts = client_for(settings.REDIS_URL)
    fair_args = argparse.Namespace(
        **{**vars(args), "orgs": 10, "window": 20.0, "calibration_backlog": 30_000, "safety": 3.0, "backlog": None}
    )
    for part in ("fairness", "idle"):
        if args.only not in (None, part):
            continue
        results = {}
        for mode in MODES:
            fair_args.settings = {**args.settings, "DRAIN_KICK": mode}
            ctx = fairness.Context(fair_args, base_cfg.model_copy(update={"DRAIN_KICK": mode == "true"}), client,
                                   scripts)  # fmt: skip
            results[mode] = fairness.measure_latency(ctx) if part == "fairness" else fairness.measure_idle(ctx)
            failures += [f"kick={mode}: {f}" for f in ctx.failures]
        if part == "fairness":
            rows.append(("light envs behind a backlog: p50 ms", {m: results[m]["p50"] for m in MODES}, ""))
            rows.append(("light envs behind a backlog: p99 ms", {m: results[m]["p99"] for m in MODES}, "≤ 150"))
            rows.append(("  Postgres transactions per row", {m: results[m]["xact_per_row"] for m in MODES},
                         "not higher"))  # fmt: skip
            keys += ["light_p50_ms", "light_p99_ms", "xact_per_row"]
        else:
            rows.append(("idle: worker + beat CPU ms/s", {m: results[m]["cpu_ms_per_s"] for m in MODES},
                         "not higher"))  # fmt: skip
            keys.append("idle_cpu_ms_per_s")

    print(f"{'measure':<42} {'kick off':>10} {'kick on':>10} {'on/off':>8}  aim")
    for name, values, aim in rows:
        off, on = values["false"], values["true"]
        ratio = on / off if off else float("nan")
        digits = 3 if max(off, on) < 1 else 1
        print(f"{name:<42} {off:>10.{digits}f} {on:>10.{digits}f} {ratio:>8.2f}  {aim}")
    for failure in failures:
        print(f"!! {failure}")
    print(" ".join(f"{key}_{mode}={values[m]:.3g}" for key, (_, values, _) in zip(keys, rows, strict=True)
                   for mode, m in (("off", "false"), ("on", "true"))), flush=True)  # fmt: skip
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
