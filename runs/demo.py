"""The demo behind ``make demo``: start the processes, make a tenant, trigger a few runs, say what happened.

One function per phase, so a later issue can replace one phase — ``trigger_runs`` becomes the trigger
storm — without touching the others. The four processes (web, worker, beat, flower) run under honcho from
the Procfile; their output goes to ``.data/demo-processes.log`` so the terminal shows only the demo.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from django.contrib.auth import get_user_model

from runs import engine
from runs.ids import new_run_id
from runs.models import Environment, TaskRun
from runs.snapshot import Snapshot
from runs.tenants import Tenant, ensure_tenant, issue_api_key

Say = Callable[[str], None]

DEMO_ORG = "demo"
DEMO_ENV = "dev"
DEMO_TASK = "demo-hello"
ADMIN_USERNAME = "admin"
STOP_WAIT_S = 20.0


class DemoError(Exception):
    """A phase failed; the message says which, and what to look at."""


@dataclass(frozen=True)
class DemoConfig:
    root: Path
    port: int = 8000
    flower_port: int = 5555
    runs: int = 5
    hold: bool = False
    ready_timeout_s: float = 120.0

    @property
    def log_path(self) -> Path:
        return self.root / ".data" / "demo-processes.log"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/admin/"

    @property
    def flower_url(self) -> str:
        return f"http://127.0.0.1:{self.flower_port}/"


@dataclass(frozen=True)
class Admin:
    username: str
    password: str | None  # None: the user existed; its password was left alone


def run_demo(cfg: DemoConfig, say: Say) -> None:
    """1. refuse busy ports; 2. start the processes; 3. wait until web, flower and a worker answer;
    4. ensure the demo tenant and admin user; 5. trigger runs; 6. report; 7. hold (``--hold``) or stop."""
    check_ports_free(cfg)
    processes = start_processes(cfg)
    say(f"started web, worker, beat and flower (honcho pid {processes.pid}; output in {cfg.log_path})")
    try:
        wait_until_ready(processes, cfg, say)
        tenant, secret = ensure_demo_tenant()
        admin = ensure_admin_user()
        created_at = now_ms_precision()
        results = trigger_runs(tenant, count=cfg.runs, now=created_at)
        report(cfg, tenant, secret, admin, results, say)
        ensure_still_running(processes, cfg)
        if cfg.hold:
            hold(processes, cfg, say)
    finally:
        stop_processes(processes, say)


# ------------------------------------------------------------------------------------------ phases


def check_ports_free(cfg: DemoConfig) -> None:
    """Fail before starting anything if web's or flower's port is taken (an earlier ``make up``?)."""
    for name, variable, port in (("web", "PORT", cfg.port), ("flower", "FLOWER_PORT", cfg.flower_port)):
        with socket.socket() as sock:
            sock.settimeout(1)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                raise DemoError(f"port {port} for {name} is already in use; stop what holds it or set {variable}=…")


def start_processes(cfg: DemoConfig) -> subprocess.Popen:
    """``honcho start`` in its own session (Ctrl-C reaches only the demo, which then stops honcho)."""
    cfg.log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLOWER_PORT": str(cfg.flower_port),
        "PYTHONUNBUFFERED": "1",
    }
    cmd = [sys.executable, "-m", "honcho", "--no-colour", "start", "--port", str(cfg.port)]
    with cfg.log_path.open("w") as log:
        return subprocess.Popen(
            cmd, cwd=cfg.root, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip


def wait_until_ready(processes: subprocess.Popen, cfg: DemoConfig, say: Say) -> None:
    """Poll the admin login page, Flower and a worker ping; fail fast if honcho exits meanwhile."""
    deadline = time.monotonic() + cfg.ready_timeout_s
    waiting = {
        f"web ({cfg.admin_url}login/)": lambda: _http_ok(f"{cfg.admin_url}login/"),
        f"flower ({cfg.flower_url})": lambda: _http_ok(cfg.flower_url),
        "worker (celery ping)": _worker_answers,
    }
    while waiting:
        ensure_still_running(processes, cfg)
        for name, probe in list(waiting.items()):
            if probe():
                say(f"  ready: {name}")
                del waiting[name]
        if waiting and time.monotonic() > deadline:
            raise DemoError(
                f"not ready after {cfg.ready_timeout_s:.0f}s: {', '.join(waiting)}.\n{_log_tail(cfg.log_path)}"
            )
        time.sleep(0.5)


def ensure_demo_tenant() -> tuple[Tenant, str]:
    """The ``demo``/``dev`` tenant (enrolled), with a fresh API key whose secret is returned once."""
    tenant = ensure_tenant(DEMO_ORG, DEMO_ENV, enrol=True)
    _key, secret = issue_api_key(tenant.env)
    return tenant, secret


def ensure_admin_user() -> Admin:
    """Create the ``admin`` superuser with a random password, or leave an existing one as it is."""
    users = get_user_model()
    if users.objects.filter(username=ADMIN_USERNAME).exists():
        return Admin(ADMIN_USERNAME, None)
    password = secrets.token_urlsafe(12)
    users.objects.create_superuser(ADMIN_USERNAME, email="admin@example.invalid", password=password)
    return Admin(ADMIN_USERNAME, password)


def trigger_runs(tenant: Tenant, *, count: int, now: datetime) -> list[engine.Result]:
    """Trigger ``count`` runs through the engine, as the trigger path would. (The storm replaces this.)"""
    now_ms = int(now.timestamp() * 1000)
    return [engine.trigger(_demo_snapshot(tenant.env, i, now, now_ms), now=now) for i in range(count)]


def report(
    cfg: DemoConfig, tenant: Tenant, secret: str, admin: Admin, results: Sequence[engine.Result], say: Say
) -> None:
    """Print what the demo did, with each run's status as Postgres has it now."""
    statuses = dict(TaskRun.objects.filter(id__in=[r.run_id for r in results]).values_list("id", "status"))
    verb = "created" if tenant.org_created else "reused"
    say(f"\ntenant: org {tenant.org.slug} (id {tenant.org.id}, {verb}), env {tenant.env.slug} (id {tenant.env.id})")
    say(f"API key for {tenant.org.slug}/{tenant.env.slug} (shown once): {secret}")
    say(f"\ntriggered {len(results)} runs of task {DEMO_TASK!r} through runs.engine.trigger:")
    say(f"  {'run id':<30}  {'outcome':<8}  status in Postgres")
    for result in results:
        say(f"  {result.run_id:<30}  {result.outcome:<8}  {statuses.get(result.run_id, '(no row!)')}")
    say(f"\nadmin:  {cfg.admin_url}")
    if admin.password:
        say(f"        user {admin.username!r}, password {admin.password!r} (shown once)")
    else:
        say(f"        user {admin.username!r} exists; password unchanged (`manage.py changepassword admin`)")
    say(f"flower: {cfg.flower_url}")


def ensure_still_running(processes: subprocess.Popen, cfg: DemoConfig) -> None:
    """Honcho stops every process when one exits, so honcho gone means a process failed."""
    code = processes.poll()
    if code is not None:
        first = _first_to_stop(cfg.log_path)
        tail = _log_tail(cfg.log_path, only=first.split()[0] if first else None)
        raise DemoError(f"{first or 'a process stopped'}; honcho then stopped the others (exit {code}).\n{tail}")


def hold(processes: subprocess.Popen, cfg: DemoConfig, say: Say) -> None:
    """Keep the processes up until Ctrl-C; a process dying on its own is an error."""
    say("\nprocesses are running (HOLD=1); press Ctrl-C to stop them")
    try:
        processes.wait()
    except KeyboardInterrupt:
        return
    ensure_still_running(processes, cfg)


def stop_processes(processes: subprocess.Popen, say: Say) -> None:
    """SIGTERM to honcho, which terminates its processes (and kills them after 5 s); wait for it."""
    if processes.poll() is not None:
        return
    processes.send_signal(signal.SIGTERM)
    try:
        processes.wait(timeout=STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(processes.pid, signal.SIGKILL)
        processes.wait()
        say(f"honcho did not stop within {STOP_WAIT_S:.0f}s and was killed; check for leftover processes")
        return
    say("stopped the processes")


# ----------------------------------------------------------------------------------------- helpers


def now_ms_precision() -> datetime:
    """Snapshots carry millisecond times; reading rows back must give the same value."""
    now = datetime.now(tz=UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _demo_snapshot(env: Environment, index: int, now: datetime, now_ms: int) -> Snapshot:
    return Snapshot(
        id=new_run_id(now_ms),
        env_id=env.id,
        org_id=env.org_id,
        task_identifier=DEMO_TASK,
        created_at=now,
        payload=f'{{"json":{{"n":{index}}}}}',
        payload_type="application/super+json",
        tags=["demo"],
    )


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _worker_answers() -> bool:
    from mollifier_project.celery import app

    try:
        return bool(app.control.ping(timeout=1.0))
    except Exception:  # broker not reachable yet: keep waiting, the deadline reports it
        return False


def _first_to_stop(path: Path) -> str | None:
    """The first "<name> stopped (rc=N)" line honcho logged: the process that brought the others down."""
    try:
        match = re.search(r"system\s*\| (\S+ stopped \(rc=-?\d+\))", path.read_text(errors="replace"))
    except OSError:
        return None
    return match.group(1) if match else None


def _log_tail(path: Path, lines: int = 25, only: str | None = None) -> str:
    """The log's last lines; with ``only``, the last lines of that honcho process (e.g. ``beat.1``)."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    if only:
        text = [line for line in text if line.split("|", 1)[0].split()[-1:] == [only]]
    label = f"last lines of {only} in {path}" if only else f"last lines of {path}"
    return f"{label}:\n  " + "\n  ".join(text[-lines:])
