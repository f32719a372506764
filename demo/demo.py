"""The demo behind ``make demo``: start the processes, fire a trigger storm over HTTP, watch the buffer
absorb it and the drain turn it into rows, and check that every run exists exactly once.

One function per phase; the storm itself lives in ``demo.storm``. The five processes (web, worker, sweep, beat, flower) run under honcho from
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from django.contrib.auth import get_user_model

from buffer.buffer import Buffer
from demo import storm
from runs.tenants import ensure_tenant, issue_api_key

Say = Callable[[str], None]

DEMO_ENV = "dev"
ADMIN_USERNAME = "admin"
STOP_WAIT_S = 20.0
# The demo switches the mollifier on for its processes (an operator's own MOLLIFIER_* values win).
DEMO_FLAGS = {
    "MOLLIFIER_ENABLED": "true",
    # 20 triggers per 200 ms window (100/s) trips an env. The default (100, i.e. 500/s) sits above what
    # the direct path sustains on a 2-core machine (one fsync per commit), so the storm would never trip.
    "MOLLIFIER_TRIP_THRESHOLD": "20",
    "MOLLIFIER_DRAINER_ENABLED": "true",
    "MOLLIFIER_STALE_SWEEP_ENABLED": "true",
}


class DemoError(Exception):
    """A phase failed; the message says which, and what to look at."""


@dataclass(frozen=True)
class DemoConfig:
    root: Path
    port: int = 8000
    flower_port: int = 5555
    runs: int = 20_000
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
    """1. refuse busy ports; 2. start the processes (gate, drainer and sweep switched on); 3. wait until
    web, flower and a worker answer; 4. ensure the storm's tenants and the admin user; 5. fire the storm
    and watch it drain; 6. report; 7. hold (``--hold``) or stop."""
    check_ports_free(cfg)
    processes = start_processes(cfg)
    say(f"started web, worker, beat and flower (honcho pid {processes.pid}; output in {cfg.log_path})")
    try:
        wait_until_ready(processes, cfg, say)
        tenants = ensure_storm_tenants(cfg.runs)
        admin = ensure_admin_user()
        ok = run_storm(cfg, tenants, say)
        report(cfg, admin, say)
        ensure_still_running(processes, cfg)
        if not ok:
            raise DemoError("the storm lost or doubled runs; see the table above")
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
        **DEMO_FLAGS,
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


def ensure_storm_tenants(runs: int) -> list[storm.Tenant]:
    """``storm`` and ``calm`` (enrolled) and ``legacy`` (not enrolled), each with a fresh API key."""
    plan = (
        ("storm", True, runs, None),
        ("calm", True, max(20, runs // 200), 20.0),
        ("legacy", False, max(1, runs // 10), None),
    )
    tenants = []
    for name, enrol, count, rate in plan:
        tenant = ensure_tenant(name, DEMO_ENV, enrol=enrol)
        _key, secret = issue_api_key(tenant.env)
        tenants.append(storm.Tenant(name, tenant.env.id, tenant.org.id, secret, count, rate))
    return tenants


def ensure_admin_user() -> Admin:
    """Create the ``admin`` superuser with a random password, or leave an existing one as it is."""
    users = get_user_model()
    if users.objects.filter(username=ADMIN_USERNAME).exists():
        return Admin(ADMIN_USERNAME, None)
    password = secrets.token_urlsafe(12)
    users.objects.create_superuser(ADMIN_USERNAME, email="admin@example.invalid", password=password)
    return Admin(ADMIN_USERNAME, password)


def run_storm(cfg: DemoConfig, tenants: list[storm.Tenant], say: Say) -> bool:
    """Fire every tenant's triggers over HTTP at once, print progress until drained, then the summary."""
    say("\nthe storm: " + "; ".join(
        f"{t.name} {t.runs} triggers " + (f"at {t.rate_per_s:.0f}/s" if t.rate_per_s else "as fast as possible")
        for t in tenants
    ))  # fmt: skip
    say("  (storm and calm are enrolled in the mollifier; legacy is not, so it always writes straight to Postgres)")
    rows_before = storm.rows_of(tenants)  # the demo tenants persist: count only this storm's rows
    thread, totals = storm.fire(cfg.port, tenants)
    elapsed = storm.watch(
        say,
        thread,
        totals,
        tenants,
        Buffer.from_settings(),
        rows_before=rows_before,
        timeout_s=cfg.ready_timeout_s + 300,
    )
    return storm.summarise(say, tenants, elapsed)


def report(cfg: DemoConfig, admin: Admin, say: Say) -> None:
    """Where to look next."""
    say(f"\nadmin:  {cfg.admin_url}")
    if admin.password:
        say(f"        user {admin.username!r}, password {admin.password!r} (shown once)")
    else:
        say(f"        user {admin.username!r} exists; password unchanged (`manage.py changepassword admin`)")
    say(f"buffer dashboard: {cfg.admin_url}buffer/")
    say(f"flower: {cfg.flower_url}")
    say(f"metrics: http://127.0.0.1:{cfg.port}/metrics")


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
