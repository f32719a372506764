"""How fast gunicorn answers a trigger over HTTP: buffered, direct to Postgres, and a no-op view as the yardstick.

    python -m bench.trigger [--seconds 10] [--repeat 3] [--connections 16] [--threads 1] [--no-idempotency-key]
                            [--profile DIR]

One gunicorn (2 workers of the Procfile's worker class from ``gunicorn.conf.py``, ``--no-control-socket``, as
in the Procfile but without the access log; ``GUNICORN_CMD_ARGS="--worker-class sync"`` measures gunicorn's own)
serves ``bench.settings`` — the project plus a bench-only ``bench/noop`` view — and ``wrk`` on loopback
drives it with ``bench/trigger.lua`` (a realistic SDK v4 trigger body and headers, fresh request and
idempotency keys on every request) for ``--seconds`` per scenario:

(a) ``noop``: the same POST to a view that only returns ``{"ok": true}`` (full middleware stack);
(b) ``buffered``: ``POST /api/v1/tasks/{task}/trigger`` for an enrolled org with ``MOLLIFIER_ENABLED=true``
    and ``MOLLIFIER_TRIP_THRESHOLD=0``, so every trigger is mollified into Redis;
(c) ``direct``: the same for an org that is not enrolled, so the gate passes it through to Postgres.

Scenarios are interleaved ``--repeat`` times (drift hits all alike) after one warm-up each; medians are
reported: requests/s, p50 and p99 latency (wrk's), and the CPU time the gunicorn workers spent per
request (from ``/proc``; steadier than requests/s when other processes share the machine). Between
runs the buffer keys (a key prefix unique to this invocation, deleted at the end) and the run table are
emptied. After every trigger run the path is checked: the buffered env's queue (or the direct env's
rows) holds every 200 answer, and nothing went the other way. Any non-200 answer, socket error or failed
check is printed as ``!!`` and makes the exit status 1.

``--profile DIR``: after the measurements, one more (unmeasured) buffered run with py-spy sampling every
worker (``bench.profile``): the collapsed stacks go to ``DIR`` and the self/inclusive top functions are
printed before the table.

The last line is machine-readable: ``buffered/noop=<ratio> buffered/direct=<ratio> p99_buffered_ms=<x>``
(ratios of requests/s). Runs against ``<DATABASE_URL database>_bench`` (``bench._django``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import profile
from bench._django import PROJECT_ROOT, setup_django

LUA_SCRIPT = PROJECT_ROOT / "bench" / "trigger.lua"
TASK = "process-order"
WORKERS = 2
# The server's Mollifier settings: every trigger of an enrolled org is mollified, and the per-env cap
# (checked inside accept) never answers 429 however long the run.
SERVER_SETTINGS = {
    "MOLLIFIER_ENABLED": "true",
    "MOLLIFIER_TRIP_THRESHOLD": "0",
    "MOLLIFIER_MAX_BUFFERED_PER_ENV": str(10**9),
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="duration of each measurement")
    parser.add_argument("--repeat", type=int, default=3, help="measurements per scenario; medians are reported")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load per scenario first")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (fixed)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (1–2 on a small machine)")
    parser.add_argument(
        "--no-idempotency-key", dest="idempotency_key", action="store_false",
        help="send triggers without options.idempotencyKey (the request key is always sent, as by the SDK)",
    )  # fmt: skip
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="profile one extra buffered run with py-spy; stacks go to DIR (bench.profile)",
    )
    parser.add_argument("--database", default=None, help="database name (default: DATABASE_URL's + _bench)")
    args = parser.parse_args(argv)
    for name in ("seconds", "repeat", "connections", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")
    if args.threads > args.connections:
        parser.error("--threads must not exceed --connections")
    return args


def require_wrk() -> str:
    """The wrk binary, or exit saying how to install it."""
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit(
            "bench/trigger.py needs the wrk load generator: `make bench-trigger` provisions it "
            "(scripts/provision.sh wrk), or `brew install wrk` on macOS"
        )
    return path


# ------------------------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class WrkRun:
    """One wrk measurement, parsed from the ``WRK_RESULT`` line ``bench/trigger.lua`` prints."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    ok: int
    non_200: int
    socket_errors: int
    sample: str
    cpu_ms_per_request: float | None = None  # CPU time of the gunicorn workers per answered request

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @classmethod
    def parse(cls, output: str) -> WrkRun:
        line = next((line for line in output.splitlines() if line.startswith("WRK_RESULT ")), None)
        if line is None:
            raise RuntimeError(f"wrk printed no WRK_RESULT line:\n{output}")
        doc = json.loads(line[len("WRK_RESULT ") :])
        return cls(
            requests=doc["requests"],
            seconds=doc["duration_us"] / 1e6,
            p50_ms=doc["p50_us"] / 1000,
            p99_ms=doc["p99_us"] / 1000,
            ok=doc["ok"],
            non_200=doc["non_200"],
            socket_errors=sum(doc[name] for name in ("connect", "read", "write", "timeout")),
            sample=doc["sample"],
        )


@dataclass
class Scenario:
    name: str
    path: str
    secret: str
    lands_in: str | None = None  # trigger scenarios: "buffer" or "postgres", checked after each run
    org_id: int = 0
    env_id: int = 0
    runs: list[WrkRun] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def median(self, attr: str) -> float:
        return statistics.median(getattr(run, attr) for run in self.runs)

    def median_cpu(self) -> str:
        values = [run.cpu_ms_per_request for run in self.runs]
        return "-" if None in values else f"{statistics.median(values):.2f}"  # type: ignore[type-var]


# -------------------------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """gunicorn on ``bench.settings``; ``stop`` terminates it (and its workers) and waits."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "mollifier_project.wsgi", "-c", "mollifier_project/gunicorn.conf.py",
             "--workers", str(WORKERS),
             "--bind", f"127.0.0.1:{self.port}", "--no-control-socket", "--log-level", "warning",
             "--timeout", "60"],
            cwd=PROJECT_ROOT, env=env,
        )  # fmt: skip
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/bench/noop", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        raise RuntimeError("gunicorn did not answer in time")

    def worker_pids(self) -> list[int]:
        """The workers' pids (children of the master), for ``py-spy record --pid``."""
        try:
            out = subprocess.run(
                ["ps", "-o", "pid=", "--ppid", str(self.process.pid)], capture_output=True, text=True, check=False
            ).stdout
        except FileNotFoundError:
            return []
        return [int(pid) for pid in out.split()]

    def cpu_seconds(self, pids: Sequence[int]) -> float | None:
        """User + system CPU the workers have used (Linux ``/proc``); None if unreadable or a worker restarted."""
        total = 0
        try:
            for pid in pids:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat(5))
        except (OSError, IndexError, ValueError):
            return None
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def server_environment(database_url: str, redis_url: str, key_prefix: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOLLIFIER_")}
    env.update(SERVER_SETTINGS)
    env.update(
        MOLLIFIER_KEY_PREFIX=key_prefix,
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        DJANGO_SETTINGS_MODULE="bench.settings",
        DJANGO_DEBUG="0",  # DEBUG keeps every query in memory and slows every request
        LOG_LEVEL="WARNING",
    )
    return env


# ------------------------------------------------------------------------------------------------ wrk


def run_wrk(wrk: str, url: str, args: argparse.Namespace, *, secret: str, seconds: int) -> WrkRun:
    nonce = secrets.token_hex(20)
    command = [
        wrk, "--threads", str(args.threads), "--connections", str(args.connections), "--duration", f"{seconds}s",
        "--timeout", "10s", "--script", str(LUA_SCRIPT), url, "--", secret, nonce, "1" if args.idempotency_key else "0",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited with {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return WrkRun.parse(done.stdout)


# ----------------------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    wrk = require_wrk()
    py_spy = profile.require_py_spy() if args.profile else None
    key_prefix = f"bench-trigger-{uuid.uuid4().hex[:12]}"
    os.environ.update(SERVER_SETTINGS, MOLLIFIER_KEY_PREFIX=key_prefix)
    database_url = setup_django(database=args.database)

    from django.conf import settings
    from django.db import connection
    from django.utils import timezone

    from buffer.buffer import Buffer
    from runs.models import TaskRun
    from runs.tenants import ensure_tenant, issue_api_key, revoke_keys

    buffer = Buffer.from_settings()
    redis_client = buffer._client

    def flush() -> None:
        """Empty this invocation's buffer keys and the run table (a dedicated bench database)."""
        for batch in _batched(redis_client.scan_iter(match=f"{key_prefix}:*", count=1000), 1000):
            redis_client.unlink(*batch)
        with connection.cursor() as cur:
            cur.execute(f"TRUNCATE {TaskRun._meta.db_table} CASCADE")

    buffered_tenant = ensure_tenant("bench-trigger-buffered", "prod", enrol=True)
    direct_tenant = ensure_tenant("bench-trigger-direct", "prod")
    if direct_tenant.org.mollifier_enrolled:
        raise SystemExit("org bench-trigger-direct is enrolled in the bench database; un-enrol it to measure (c)")
    buffered_key, buffered_secret = issue_api_key(buffered_tenant.env)
    direct_key, direct_secret = issue_api_key(direct_tenant.env)
    trigger_path = f"/api/v1/tasks/{TASK}/trigger"
    scenarios = [
        Scenario("noop", "/bench/noop", buffered_secret),
        Scenario("buffered", trigger_path, buffered_secret, "buffer", buffered_tenant.org.id, buffered_tenant.env.id),
        Scenario("direct", trigger_path, direct_secret, "postgres", direct_tenant.org.id, direct_tenant.env.id),
    ]

    def check_path(scenario: Scenario, run: WrkRun) -> str | None:
        """Every 200 landed where the scenario says (in-flight requests at wrk's stop may add up to
        ``connections`` more), and none went the other way."""
        if scenario.lands_in is None:
            return None
        time.sleep(0.5)  # let requests in flight when wrk stopped finish
        depth = buffer.depth(buffer.shard_for(scenario.org_id), scenario.env_id)
        rows = TaskRun.objects.filter(env_id=scenario.env_id).count()
        landed, elsewhere = (depth, rows) if scenario.lands_in == "buffer" else (rows, depth)
        where = "buffered entries" if scenario.lands_in == "buffer" else "rows"
        if elsewhere or not run.ok <= landed <= run.ok + args.connections:
            return f"path check: {run.ok} answers 200, {landed} {where}, {elsewhere} went the other way"
        return None

    server: Server | None = None
    try:
        server = Server(server_environment(database_url, settings.REDIS_URL, key_prefix))
        workers = server.worker_pids()
        print(
            f"database {database_url.rsplit('/', 1)[-1]}; gunicorn pid {server.process.pid} workers "
            f"{workers}; wrk {args.threads} thread(s) × {args.connections} connections, "
            f"{args.seconds} s × {args.repeat}; idempotency key {'on' if args.idempotency_key else 'off'}; "
            f"key prefix {key_prefix}",
            flush=True,
        )
        for scenario in scenarios:
            if args.warmup:
                flush()
                warm = run_wrk(wrk, server.url + scenario.path, args, secret=scenario.secret, seconds=args.warmup)
                if warm.non_200 or warm.socket_errors or not warm.ok:
                    raise SystemExit(f"!! warm-up of {scenario.name} failed: {_describe_errors(warm)}")
        for i in range(args.repeat):
            for scenario in scenarios:
                flush()
                cpu_before = server.cpu_seconds(workers)
                run = run_wrk(wrk, server.url + scenario.path, args, secret=scenario.secret, seconds=args.seconds)
                cpu_after = server.cpu_seconds(workers)
                if cpu_before is not None and cpu_after is not None and run.requests:
                    run = dataclasses.replace(run, cpu_ms_per_request=(cpu_after - cpu_before) * 1000 / run.requests)
                scenario.runs.append(run)
                problem = _describe_errors(run) if run.non_200 or run.socket_errors else check_path(scenario, run)
                if problem:
                    scenario.problems.append(f"run {i + 1}: {problem}")
                print(
                    f"run {i + 1}/{args.repeat} {scenario.name:<9} {run.rps:>8,.0f} req/s  p50 {run.p50_ms:6.2f} ms  "
                    f"p99 {run.p99_ms:7.2f} ms  worker CPU {run.cpu_ms_per_request or 0:5.2f} ms/req"
                    + (f"  !! {problem}" if problem else ""),
                    flush=True,
                )
        if py_spy is not None:
            flush()
            label = f"buffered-{key_prefix}"
            spies = profile.start(py_spy, workers, seconds=args.seconds, out_dir=args.profile, label=label)
            run_wrk(wrk, server.url + scenarios[1].path, args, secret=buffered_secret, seconds=args.seconds)
            profile.wait(spies, timeout=30)
            print(f"\nprofile of one buffered run (py-spy, {args.profile}/{label}-*.txt):", flush=True)
            print(profile.summarise(sorted(args.profile.glob(f"{label}-*.txt"))), flush=True)
    finally:
        if server is not None:
            server.stop()
        flush()
        revoke_keys([buffered_key.pk, direct_key.pk], timezone.now())

    print()
    print(
        f"{'scenario':<10} {'req/s (median)':>15} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/req':>11} {'requests':>10} "
        f"{'non-200':>8} {'errors':>7}"
    )
    for scenario in scenarios:
        flag = "  !! ERRORS" if scenario.problems else ""
        print(
            f"{scenario.name:<10} {scenario.median('rps'):>15,.0f} {scenario.median('p50_ms'):>8.2f} "
            f"{scenario.median('p99_ms'):>8.2f} {scenario.median_cpu():>11} {sum(r.requests for r in scenario.runs):>10,} "
            f"{sum(r.non_200 for r in scenario.runs):>8} {sum(r.socket_errors for r in scenario.runs):>7}{flag}"
        )
    problems = [f"{s.name} {problem}" for s in scenarios for problem in s.problems]
    if problems:
        print("\n!! SOME RUNS FAILED — their figures are in the medians above and are not trustworthy:")
        for problem in problems:
            print(f"!!   {problem}")
    noop, buffered, direct = scenarios
    print(
        f"buffered/noop={buffered.median('rps') / noop.median('rps'):.2f} "
        f"buffered/direct={buffered.median('rps') / direct.median('rps'):.2f} "
        f"p99_buffered_ms={buffered.median('p99_ms'):.1f}"
    )
    return 1 if problems else 0


def _describe_errors(run: WrkRun) -> str:
    parts = []
    if run.non_200:
        parts.append(f"{run.non_200} non-200 answers (first: {run.sample})")
    if run.socket_errors:
        parts.append(f"{run.socket_errors} socket errors/timeouts")
    if not run.ok:
        parts.append("no 200 answer at all")
    return "; ".join(parts)


def _batched(items: Any, size: int) -> Any:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


if __name__ == "__main__":
    sys.exit(main())
