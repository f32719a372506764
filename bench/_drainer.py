"""Shared by the drain benchmarks: tenants, a fast buffer fill, held shard locks, and a real Celery worker
plus beat as subprocesses.

Import after ``bench._django.setup_django`` (this module imports Django models).

The worker and beat are started exactly as a deployment would (``celery -A mollifier_project worker|beat``)
with the Mollifier settings passed as ``MOLLIFIER_*`` environment variables and a broker database of
their own. Each is the leader of a new session, and ``stop`` kills that whole process group (the prefork
children included) by its id — never by name.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from django.conf import settings
from django.db import connection

from bench._django import PROJECT_ROOT
from buffer.buffer import Buffer
from buffer.values import AcceptStatus
from runs.ids import new_run_id
from runs.models import Environment, Organization, TaskRun
from runs.snapshot import Snapshot, to_snapshot

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/10"


def unique_prefix(name: str) -> str:
    """A buffer key prefix no one else uses, so the benchmark never meets another run's keys."""
    return f"bench-{name}-{uuid.uuid4().hex[:10]}"


def ensure_tenants(name: str, *, orgs: int, envs: int) -> list[Environment]:
    """``envs`` environments spread round robin over ``orgs`` enrolled orgs (reused across runs)."""
    made: list[Organization] = []
    for i in range(orgs):
        org, _ = Organization.objects.get_or_create(
            slug=f"{name}-org-{i}", defaults={"name": f"{name} org {i}", "feature_flags": {"mollifier": True}}
        )
        made.append(org)
    result = []
    for i in range(envs):
        env, _ = Environment.objects.get_or_create(org=made[i % orgs], slug=f"{name}-env-{i}")
        result.append(env)
    return result


def truncate_runs() -> None:
    with connection.cursor() as cur:
        cur.execute(f"TRUNCATE {TaskRun._meta.db_table} CASCADE")


def fill(buffer: Buffer, snapshots: Iterable[Snapshot], *, now_ms: int, batch: int = 2000) -> int:
    """Accept every snapshot, ``batch`` script calls per pipeline (one round trip each), and check that
    each one was ACCEPTED. Returns how many were accepted.

    Calls the same registered ``accept`` script with the same KEYS and ARGV as ``Buffer.accept`` (no
    idempotency key, no per-env cap worth the name); only the round trips are batched, so a 100k fill
    takes seconds instead of a quarter of a minute.
    """
    accepted = 0
    pipe = buffer._client.pipeline(transaction=False)
    pending = 0

    def flush() -> int:
        replies = pipe.execute()
        bad = [reply for reply in replies if AcceptStatus(reply[0]) is not AcceptStatus.ACCEPTED]
        if bad:
            raise SystemExit(f"fill: {len(bad)} snapshots were not accepted, e.g. {bad[0]!r}")
        return len(replies)

    for s in snapshots:
        k = buffer.keys_for_org(s.org_id)
        stored, created_ms = buffer._stored(to_snapshot(s), now_ms)  # as Buffer.accept sends it
        buffer._scripts.accept(
            keys=[k.entry(s.id), k.queue(s.env_id), k.org_envs(s.org_id), k.orgs],
            args=[s.id, s.env_id, s.org_id, stored, now_ms, 10**9, "", k.base, created_ms],
            client=pipe,
        )
        pending += 1
        if pending >= batch:
            accepted += flush()
            pending = 0
    if pending:
        accepted += flush()
    return accepted


def small_snapshots(env: Environment, n: int, *, now_ms: int) -> Iterator[Snapshot]:
    """``n`` minimal snapshots for ``env`` (tiny payload), built lazily: for backlogs whose content does
    not matter, only their count (fairness), so a big fill costs neither memory nor build time."""
    created = datetime.fromtimestamp(now_ms / 1000, tz=UTC)
    for i in range(n):
        yield Snapshot(
            id=new_run_id(now_ms), env_id=env.id, org_id=env.org_id, task_identifier="backlog-task",
            created_at=created, payload=f'{{"json":{{"i":{i}}}}}',
        )  # fmt: skip


def interleave(groups: Sequence[Sequence[Any]]) -> list[Any]:
    """Round robin over the groups (a steady mix of tenants, as a storm would arrive)."""
    out: list[Any] = []
    for i in range(max((len(g) for g in groups), default=0)):
        out.extend(g[i] for g in groups if i < len(g))
    return out


class ShardHold:
    """Every shard's drain lock, held by us: drain ticks return at once ("someone got there first")
    until ``release``, so the fill and the worker's start-up stay out of the measurement."""

    def __init__(self, buffer: Buffer, *, seconds: float = 600) -> None:
        self.locks = []
        for shard in range(buffer.shards):
            lock = buffer._client.lock(
                buffer.keys(shard).drain_lock, timeout=seconds, blocking=False, thread_local=False
            )
            if not lock.acquire():
                raise SystemExit(f"shard {shard} is already being drained under this key prefix")
            self.locks.append(lock)

    def release(self) -> None:
        for lock in self.locks:
            lock.release()
        self.locks.clear()


def queued_or_leased(buffer: Buffer) -> bool:
    """Anything left in the buffer (queued, retrying or in flight) in any shard. One round trip."""
    return any(buffer.shard_has_work())


def delete_prefix(client: redis.Redis, prefix: str) -> int:
    keys = list(client.scan_iter(match=f"{prefix}:*", count=5000))
    for i in range(0, len(keys), 5000):
        client.delete(*keys[i : i + 5000])
    return len(keys)


@dataclass
class Celery:
    """A ``celery worker`` (queue ``drain``) and ``celery beat`` for the project, as subprocesses."""

    key_prefix: str
    mollifier_env: dict[str, str]
    broker_url: str = DEFAULT_BROKER_URL
    concurrency: int = 2
    pool: str = "prefork"
    log_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mollifier-bench-")))
    keep_logs: bool = False  # else the log directory goes with ``stop`` (errors are read before that)
    root: Path = PROJECT_ROOT  # the tree the processes import the project from (``bench.drain --compare``)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    _logs: list[Any] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOLLIFIER_")}
        env.update(
            DATABASE_URL=os.environ["DATABASE_URL"],
            REDIS_URL=settings.REDIS_URL,
            CELERY_BROKER_URL=self.broker_url,
            DJANGO_SETTINGS_MODULE="mollifier_project.settings",
            LOG_LEVEL="INFO",  # the readiness lines ("ready.", "beat: Starting") are INFO
            MOLLIFIER_KEY_PREFIX=self.key_prefix,
            MOLLIFIER_DRAINER_ENABLED="true",
            **self.mollifier_env,
        )
        return env

    def _start(self, name: str, args: list[str]) -> None:
        log = (self.log_dir / f"{name}.log").open("wb")
        self._logs.append(log)
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "mollifier_project", *args],
            cwd=self.root, env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def start(self) -> None:
        self._start(
            "worker",
            ["worker", "--pool", self.pool, "--concurrency", str(self.concurrency), "--queues", "drain",
             "--hostname", f"bench-{uuid.uuid4().hex[:6]}@%h", "--without-gossip", "--without-mingle",
             "--without-heartbeat", "--loglevel", "INFO"],
        )  # fmt: skip
        self._start("beat", ["beat", "--schedule", str(self.log_dir / "beat-schedule"), "--loglevel", "INFO"])

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the worker logs ``ready.`` and beat has started; fail with the log tail if one exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise SystemExit(f"{name} exited with {process.returncode}:\n{self.tail(name)}")
            if " ready." in self.log("worker") and "beat: Starting" in self.log("beat"):
                return
            time.sleep(0.05)
        raise SystemExit(f"worker/beat not ready after {timeout} s:\n{self.tail('worker')}\n{self.tail('beat')}")

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def tail(self, name: str, lines: int = 30) -> str:
        return "\n".join(self.log(name).splitlines()[-lines:])

    def errors(self) -> list[str]:
        """Log lines of either process that report an error or a traceback."""
        return [
            line
            for name in self.processes
            for line in self.log(name).splitlines()
            if any(mark in line for mark in (" ERROR ", '"level": "ERROR"', "CRITICAL", "Traceback"))
        ]

    def stop(self) -> None:
        """SIGTERM each process group, then SIGKILL what is left; remove the broker's queues."""
        for process in self.processes.values():
            if process.poll() is None:
                _signal_group(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                pass
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()
        for log in self._logs:
            log.close()
        self._logs.clear()
        clear_broker(self.broker_url)
        if not self.keep_logs:
            shutil.rmtree(self.log_dir, ignore_errors=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process (Linux ``/proc``); 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_seconds() -> float:
    """CPU seconds spent by everything on the machine (all cores, idle and iowait excluded)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@dataclass
class CpuMeter:
    """Where the CPU went while the drain ran: the worker (main + pool children), beat, the Postgres
    backends serving the benchmark database, the Redis server, and everything else on the machine (other
    users included — on a shared machine that line is the noise). Linux only; all zeros elsewhere.

    Backends can come and go (a worker replaces a session after an error; a tree from before the workers kept
    their sessions opened one per task), so ``poll`` is called often during the drain and keeps the last CPU
    figure seen per process; what a backend spends between its last poll and its exit is missed (≤ one poll
    interval per session).
    """

    celery: Celery
    database: str
    redis_pid: int | None = None
    start: dict[str, float] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    _titles: dict[int, bool] = field(default_factory=dict)

    def _backends(self) -> list[int]:
        """Postgres backends of the benchmark database, by their process title ("postgres: … <db> …")."""
        pids = []
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            pid = int(name)
            if pid not in self._titles:
                try:
                    title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                except OSError:
                    continue
                self._titles[pid] = title.startswith("postgres: ") and f" {self.database} " in title
            if self._titles[pid]:
                pids.append(pid)
        return pids

    def _sample(self) -> dict[str, float]:
        """Cumulative CPU per process (``group:pid``) and of the whole machine."""
        worker = self.celery.processes["worker"].pid
        sample = {f"worker:{p}": cpu_seconds(p) for p in [worker, *children(worker)]}
        sample.update({f"postgres:{p}": cpu_seconds(p) for p in self._backends()})
        sample["beat:"] = cpu_seconds(self.celery.processes["beat"].pid)
        sample["redis:"] = cpu_seconds(self.redis_pid) if self.redis_pid else 0.0
        sample["machine"] = _machine_busy_seconds()
        return sample

    def begin(self) -> None:
        if not Path("/proc/stat").exists():
            return
        try:
            self.redis_pid = int(redis.Redis.from_url(settings.REDIS_URL).info("server")["process_id"])
        except (redis.RedisError, KeyError, ValueError):
            self.redis_pid = None
        self.start = self._sample()
        self.last = dict(self.start)

    def poll(self) -> None:
        if self.start:
            self.last.update({key: value for key, value in self._sample().items() if value})

    def end(self) -> None:
        if not self.start:
            return
        self.poll()
        grouped: dict[str, float] = {"worker": 0.0, "beat": 0.0, "postgres": 0.0, "redis": 0.0}
        for key, value in self.last.items():
            if key != "machine":  # a process that appeared meanwhile started from 0
                grouped[key.split(":")[0]] += value - self.start.get(key, 0.0)
        grouped["other"] = max(0.0, self.last["machine"] - self.start["machine"] - sum(grouped.values()))
        self.seconds = grouped


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def clear_broker(url: str) -> None:
    """Drop the Celery queues this project uses from the broker database (tick messages would otherwise
    wait there for the next run, expired or not)."""
    client = redis.Redis.from_url(url)
    try:
        names = [b"drain", b"sweep", b"default", b"unacked", b"unacked_index", b"unacked_mutex"]
        names += list(client.scan_iter(match="_kombu.binding*"))
        client.delete(*names)
    finally:
        client.close()
