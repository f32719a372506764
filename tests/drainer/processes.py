"""Real Celery processes for the drain's process tests: workers, beat, a sender, and Postgres levers.

Workers run ``celery worker --pool solo`` from ``tests.drainer.worker_app`` against the pytest test
database (tests need ``django_db(transaction=True)`` so their rows are committed and visible), the test's
Redis key prefix, and a broker of their own (``DRAIN_TEST_BROKER_URL``, default db 9 of ``REDIS_URL``'s
server) whose keys carry a per-test prefix. Every process is started in its own session and killed by
its pid in ``Cluster.stop``, which the test fixture calls even when the test fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psycopg
import redis
from celery import Celery
from django.conf import settings
from django.db import connection
from psycopg import sql

from tests.live import database_url_of_test_db

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.drainer.worker_app"


def settings_env(values: Mapping[str, object]) -> dict[str, str]:
    """MOLLIFIER settings as the ``MOLLIFIER_*`` environment variables a subprocess reads them from."""
    return {f"MOLLIFIER_{k}": str(v).lower() if isinstance(v, bool) else str(v) for k, v in values.items()}


def broker_url() -> str:
    """The broker for test workers: ``DRAIN_TEST_BROKER_URL``, else db 9 on ``REDIS_URL``'s server."""
    explicit = os.environ.get("DRAIN_TEST_BROKER_URL")
    if explicit:
        return explicit
    return urllib.parse.urlsplit(settings.REDIS_URL)._replace(path="/9").geturl()


def wait_until(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Process:
    """One Celery subprocess (worker or beat) with its log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        self.started = time.monotonic()
        self._log_file = log.open("wb")
        self.popen = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def kill(self) -> int:
        """SIGKILL, as the OOM killer or a node failure would: no cleanup, no ack. Returns the exit status."""
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGKILL)
        return self.popen.wait(10)

    def kill_group(self) -> None:
        """SIGKILL this process and every process of its session (a prefork worker's children) at once."""
        os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    def stop(self) -> None:
        """Warm shutdown if it comes quickly (``terminate`` first, for all processes at once), else
        SIGKILL; then anything left in its session."""
        self.terminate()
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)  # the session this process led (prefork children)
        except ProcessLookupError:
            pass
        self._log_file.close()

    def terminate(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


class Cluster:
    """The processes of one test, sharing its key prefix, its settings and a private broker key space."""

    def __init__(self, *, key_prefix: str, settings_env: dict[str, str], log_dir: Path) -> None:
        self.key_prefix = key_prefix
        self.events_key = f"{key_prefix}:drain-test:events"
        self.broker_prefix = f"{key_prefix}:broker:"
        self.broker_url = broker_url()
        self.log_dir = log_dir
        self.processes: list[Process] = []
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("MOLLIFIER_", "DRAINTEST_"))}
        self.env.update(
            DATABASE_URL=database_url_of_test_db(),
            REDIS_URL=settings.REDIS_URL,
            CELERY_BROKER_URL=self.broker_url,
            DRAINTEST_EVENTS=self.events_key,
            DRAINTEST_BROKER_PREFIX=self.broker_prefix,
            LOG_LEVEL="INFO",
            MOLLIFIER_KEY_PREFIX=key_prefix,
            **settings_env,
        )
        self.redis = redis.Redis.from_url(settings.REDIS_URL, decode_responses=True)
        self.sender = Celery("drain-test-sender", broker=self.broker_url, set_as_current=False)
        self.sender.conf.broker_transport_options = {"global_keyprefix": self.broker_prefix}

    # -- processes ------------------------------------------------------------------------------------

    def _start(self, name: str, args: list[str], extra_env: dict[str, str]) -> Process:
        env = {**self.env, "DRAINTEST_NAME": name, **extra_env}
        process = Process(name, [sys.executable, "-m", "celery", "-A", APP, *args], env, self.log_dir / f"{name}.log")
        self.processes.append(process)
        return process

    def start_worker(
        self, name: str, *, crash: str = "", queues: str = "drain", pool: str = "solo", session: bool = False
    ) -> Process:
        """A solo-pool worker on the ``drain`` queue (or ``queues``: a private one lets the test hand one task
        to this very process): the task runs in the process we start, so SIGKILL or SIGSTOP of that pid
        hits the drain itself, and one process executes one task at a time. ``pool="prefork"``: the
        Procfile's pool, one child; the main process reads the broker while the child runs a task (what
        prefetch means), and ``kill_group`` is the node failure that takes both. ``session``: task events
        carry the Postgres session (``DRAINTEST_SESSION``, tests/drainer/worker_app.py)."""
        extra = {"DRAINTEST_CRASH": crash} if crash else {}
        if session:
            extra["DRAINTEST_SESSION"] = "1"
        return self._start(
            name,
            ["worker", "--pool", pool, "--concurrency", "1", "--queues", queues, "--hostname", f"{name}@drain-test",
             "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "INFO"],
            extra,
        )  # fmt: skip

    def start_beat(self, name: str = "beat") -> Process:
        """A ``celery beat`` with a schedule file of its own (several beats may run: ``drainer.beat``)."""
        schedule = self.log_dir / f"{name}-schedule"
        return self._start(name, ["beat", "--schedule", str(schedule), "--loglevel", "INFO"], {})

    def wait_ready(self, *processes: Process, timeout: float = 30.0) -> None:
        names = {p.name for p in processes}

        def ready() -> bool:
            for p in processes:
                if p.popen.poll() is not None:
                    raise AssertionError(f"{p.name} exited with {p.popen.returncode}:\n{p.tail()}")
            return names <= {e["name"] for e in self.events("ready")}

        wait_until(ready, timeout=timeout, what=f"{sorted(names)} to be ready")

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.stop()
        self.sender.close()
        broker = redis.Redis.from_url(self.broker_url)
        keys = list(broker.scan_iter(match=f"{self.broker_prefix}*", count=1000))
        if keys:
            broker.delete(*keys)
        broker.close()
        self.redis.close()

    def retire(self, process: Process) -> None:
        """Stop one process now (warm shutdown, else SIGKILL) and forget it, so ``stop`` never signals its pid
        again (a pid the system may have reused by then)."""
        process.stop()
        self.processes.remove(process)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} (pid {p.pid}) ---\n{p.tail()}" for p in self.processes)

    # -- tasks and what they did -----------------------------------------------------------------------

    def send_drain(self, shard: int, *, expires: float | None = None, queue: str = "drain") -> None:
        """Send ``drain_shard(shard)`` through the broker, as beat's fan-out does."""
        self.sender.send_task("drainer.drain_shard", args=(shard,), queue=queue, expires=expires)

    def drain_until(self, done: Callable[[], Any], *, shards: list[int], timeout: float, every: float = 0.5) -> None:
        """Send a tick per shard every ``every`` s (expiring like beat's) until ``done()`` holds."""
        deadline = time.monotonic() + timeout
        next_tick = 0.0
        while not done():
            now = time.monotonic()
            if now >= deadline:
                raise AssertionError(f"not drained after {timeout} s; reports: {self.drain_reports()}\n{self.logs()}")
            if now >= next_tick:
                for shard in shards:
                    self.send_drain(shard, expires=2 * every)
                next_tick = now + every
            time.sleep(0.05)

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        events = [json.loads(raw) for raw in self.redis.lrange(self.events_key, 0, -1)]
        return [e for e in events if kind is None or e["event"] == kind]

    def sends(self, task: str) -> list[dict[str, Any]]:
        """Messages of ``task`` published by this test's processes (a beat's ticks): name, pid, at, beat epoch."""
        return [e for e in self.events("sent") if e["task"] == task]

    def drain_reports(self) -> list[dict[str, Any]]:
        """Finished ``drain_shard`` tasks: name, pid, shard, started/ended, retval, created (run ids)."""
        return [e for e in self.events("task") if e["task"] == "drainer.drain_shard"]


# -- Postgres levers ----------------------------------------------------------------------------------


class RowLock:
    """An uncommitted INSERT of ``run_id`` from a second session: a drain inserting the same id blocks
    on it (ON CONFLICT must wait for the other transaction's outcome) until ``release`` rolls it back."""

    def __init__(self, run_id: str, env_id: int, org_id: int) -> None:
        self.conn = psycopg.connect(database_url_of_test_db())
        self.conn.execute(
            "INSERT INTO runs_taskrun (id, env_id, org_id, task_identifier, status, payload_type, tags, priority,"
            " depth, created_at, buffered) VALUES (%s, %s, %s, 't', 'PENDING', 'application/json', '{}', 0, 0,"
            " now(), false)",
            (run_id, env_id, org_id),
        )

    def release(self) -> None:
        if not self.conn.closed:
            self.conn.rollback()
            self.conn.close()


def inserts_waiting_on_a_lock() -> list[int]:
    """Pids of the test database's backends blocked writing the runs table — its staged INSERT or its plain
    COPY (docs/architecture.md#drain-throughput) — a drain that a ``RowLock`` holds up."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            " AND (query LIKE %s OR query LIKE %s)",
            ["INSERT INTO runs_taskrun%", "COPY runs_taskrun %"],
        )
        return [pid for (pid,) in cur.fetchall()]


def other_sessions() -> int:
    """Client sessions of the test database besides the test's own (a worker keeps one between tasks once it
    has run one: docs/operations.md#postgres)."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND backend_type = 'client backend'"
        )
        return cur.fetchone()[0]


def backend_state(pid: int) -> str | None:
    """``pg_stat_activity.state`` of a backend ("active", "idle in transaction", …), None once it is gone."""
    with connection.cursor() as cur:
        cur.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", [pid])
        row = cur.fetchone()
        return None if row is None else row[0]


def backend_alive(pid: int) -> bool:
    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid])
        return cur.fetchone()[0] > 0


class Outage:
    """Postgres going away for the test database only (the server is shared, so it is never stopped):
    ``cut`` terminates every backend of the test database but the test's own; ``refuse`` turns new
    connections away (``ALLOW_CONNECTIONS false``). ``close`` always lets connections in again."""

    def __init__(self) -> None:
        self.db = settings.DATABASES["default"]["NAME"]
        with connection.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            self.spare_pid = cur.fetchone()[0]
        admin_url = urllib.parse.urlsplit(database_url_of_test_db())._replace(path="/postgres").geturl()
        self.admin = psycopg.connect(admin_url, autocommit=True)
        self.terminated = 0

    def cut(self) -> int:
        """Terminate the test database's client backends except ours; returns how many were killed."""
        rows = self.admin.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> %s AND backend_type = 'client backend'",
            (self.db, self.spare_pid),
        ).fetchone()
        self.terminated += rows[0]
        return rows[0]

    def refuse(self, refused: bool) -> None:
        self.admin.execute(
            sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
                sql.Identifier(self.db), sql.SQL("false" if refused else "true")
            )
        )

    def close(self) -> None:
        try:
            self.refuse(False)
        finally:
            self.admin.close()


class Producer(threading.Thread):
    """Triggers that keep arriving (as the trigger path would park them) at about ``per_second``, until
    ``stop``. Only Redis is touched, so the stream goes on through a Postgres outage."""

    def __init__(self, accept: Callable[[int], list[str]], per_second: int) -> None:
        super().__init__(daemon=True)
        self.accept = accept
        self.per_tick = max(1, per_second // 50)
        self.ids: list[str] = []
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                self.ids.extend(self.accept(self.per_tick))
                self._halt.wait(0.02)
        except BaseException as exc:  # reported by ``stop`` in the test's thread
            self.error = exc

    def stop(self) -> list[str]:
        self._halt.set()
        self.join(10)
        if self.error is not None:
            raise self.error
        return self.ids


class CrashLoop(threading.Thread):
    """A drain worker that is SIGKILLed every ``period`` s and started again at once, as a crash-looping
    node is: every life is a fresh ``cluster.start_worker(f"{name}-{n}")`` (solo pool, so the kill lands in
    the drain itself, wherever it is). The period runs from the moment the worker is ready (its log says
    so), so that every life drains for ``period`` s however long the boot took (about 1–3 s here, which
    would leave a fixed-clock loop with lives that never reach the drain). ``before_kill()``, if given,
    runs just before each kill (to record what was in flight). ``stop`` ends the loop and returns the worker
    alive at that moment, which is left running (``Cluster.stop`` stops it)."""

    def __init__(
        self, cluster: Cluster, *, name: str = "crash", period: float = 2.0, boot_timeout: float = 60.0,
        before_kill: Callable[[], None] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(daemon=True)
        self.cluster = cluster
        self.name_prefix = name
        self.period = period
        self.boot_timeout = boot_timeout
        self.before_kill = before_kill
        self.killed: list[Process] = []
        self.boot_s: list[float] = []  # per life: start → "ready." in its log
        self.error: BaseException | None = None
        self._halt = threading.Event()
        self.worker = cluster.start_worker(f"{name}-0")

    def _wait_ready(self) -> None:
        deadline = self.worker.started + self.boot_timeout
        while b" ready." not in self.worker.log.read_bytes():
            if self.worker.popen.poll() is not None:
                raise AssertionError(
                    f"{self.worker.name} exited with {self.worker.popen.returncode}:\n{self.worker.tail()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.worker.name} not ready after {self.boot_timeout} s:\n{self.worker.tail()}")
            if self._halt.wait(0.05):
                return
        self.boot_s.append(time.monotonic() - self.worker.started)

    def run(self) -> None:
        try:
            while True:
                self._wait_ready()
                if self._halt.wait(self.period):
                    return
                if self.before_kill is not None:
                    self.before_kill()
                status = self.worker.kill()
                if status != -signal.SIGKILL:
                    raise AssertionError(
                        f"{self.worker.name} exited with {status} before its kill:\n{self.worker.tail()}"
                    )
                # Dead and reaped: out of ``Cluster.stop``, whose killpg must never meet a reused pid.
                self.worker._log_file.close()
                self.cluster.processes.remove(self.worker)
                self.killed.append(self.worker)
                self.worker = self.cluster.start_worker(f"{self.name_prefix}-{len(self.killed)}")
        except BaseException as exc:  # reported by ``stop`` in the test's thread
            self.error = exc

    @property
    def kills(self) -> int:
        return len(self.killed)

    def stop(self) -> Process:
        self._halt.set()
        self.join(30)
        if self.error is not None:
            raise self.error
        return self.worker
