"""Several hosts on one machine: Linux network namespaces on a private bridge (docs/operations.md#deploying-on-several-hosts).

One namespace per host — web, drain1, drain2, beat, redis, postgres — each with a veth pair into the bridge
``mhx-br`` on 10.237.20.0/24 (the bridge itself is 10.237.20.1, so this process, in the root namespace,
reaches every host). The redis host runs its own ``redis-server`` on 10.237.20.20:6379, the postgres host its
own Postgres cluster (initdb in a temporary directory, run as the ``postgres`` user) on 10.237.20.30:5432.
Processes are started on a host with ``ip netns exec`` (``Topology.argv``); round trips and faults are added
by scripts/netproxy.py, which listens on the bridge address and forwards to Redis or Postgres, one port per
link. A whole host is cut off with ``ip link set … down`` on its veth (``cut_host``/``heal_host``).

Only these namespaces' addresses are ever targets. Everything is named with the ``mhx`` prefix; the topology
removes what it made when its ``with`` block ends, at exit (atexit), and before it builds (leftovers of a run
that was SIGKILLed), and ``--cleanup`` removes leftovers by that prefix alone. Without root (or without
``ip``), it refuses with the reason.

Usage:
  python scripts/hosts.py run -- CMD ...   build, run CMD with DATABASE_URL/REDIS_URL on the hosts' servers and
                                           HOSTS_TOPOLOGY describing the hosts, tear down (also on failure or ^C);
                                           exits with CMD's status. Where namespaces cannot be made, CMD runs
                                           with HOSTS_UNAVAILABLE=<reason> (tests/hosts skips with it)
  python scripts/hosts.py up               build, print the addresses, wait for ^C, tear down
  python scripts/hosts.py --cleanup        remove leftovers (namespaces, bridge, veths, servers) by prefix
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PREFIX = "mhx"
BRIDGE = f"{PREFIX}-br"
SUBNET = "10.237.20"
GATEWAY = f"{SUBNET}.1"
HOSTS = {"web": 10, "drain1": 11, "drain2": 12, "beat": 13, "redis": 20, "postgres": 30}
REDIS_PORT = 6379
POSTGRES_PORT = 5432
DATABASE = "mollifier"
RUN_DIR_GLOB = f"{PREFIX}-run-"  # temporary directories (servers' data), under tempfile.gettempdir()
READY_S = 30.0


class Unavailable(RuntimeError):
    """Namespaces cannot be made here; the message says why."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def unavailable_reason() -> str | None:
    """Why this machine cannot build the topology, or None."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces, bridges and veth pairs need root (CI runs this stage as root)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if shutil.which("redis-server") is None:
        return "redis-server is not on PATH"
    if postgres_bin() is None:
        return "no Postgres server binaries under /usr/lib/postgresql/*/bin"
    clash = [line for line in _ip("-4", "-o", "addr").stdout.splitlines() if f" {SUBNET}." in line]
    if clash and not all(f" {BRIDGE} " in line or f"{PREFIX}-" in line for line in clash):
        return f"{SUBNET}.0/24 is already used on this machine: {clash[0].strip()}"
    return None


def postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


def ns(host: str) -> str:
    return f"{PREFIX}-{host}"


def address(host: str) -> str:
    return f"{SUBNET}.{HOSTS[host]}"


def cleanup(verbose: bool = False) -> list[str]:
    """Remove every namespace, link, server and data directory carrying the prefix; what it removed."""
    removed: list[str] = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(f"{PREFIX}-"):
            for pid in _ip("netns", "pids", name, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)  # only processes inside our own namespaces
                except (ProcessLookupError, ValueError):
                    pass
            _ip("netns", "del", name, check=False)
            removed.append(f"netns {name}")
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if name.startswith(f"{PREFIX}-"):
            _ip("link", "del", name, check=False)
            removed.append(f"link {name}")
    for path in Path(tempfile.gettempdir()).glob(f"{RUN_DIR_GLOB}*"):
        shutil.rmtree(path, ignore_errors=True)
        removed.append(f"dir {path}")
    if verbose:
        print("hosts: removed " + (", ".join(removed) if removed else "nothing"), flush=True)
    return removed


@dataclass(frozen=True)
class Description:
    """What tests need to use a running topology; travels in ``HOSTS_TOPOLOGY`` as JSON."""

    hosts: dict[str, str]  # host → address
    namespaces: dict[str, str]  # host → namespace name
    gateway: str
    redis: tuple[str, int]
    postgres: tuple[str, int]
    database: str

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> Description:
        raw = json.loads(text)
        return cls(**{**raw, "redis": tuple(raw["redis"]), "postgres": tuple(raw["postgres"])})

    def argv(self, host: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run on ``host``: in its network namespace (``ip netns exec`` execs it: same pid)."""
        return ["ip", "netns", "exec", self.namespaces[host], *argv]

    def cut_host(self, host: str) -> None:
        """Take the host's link to the bridge down: every connection to and from it stops carrying packets."""
        _ip("link", "set", self.namespaces[host], "down")

    def heal_host(self, host: str) -> None:
        _ip("link", "set", self.namespaces[host], "up")

    def redis_url(self, db: int = 0) -> str:
        return f"redis://{self.redis[0]}:{self.redis[1]}/{db}"

    def database_url(self, name: str | None = None) -> str:
        return f"postgresql://postgres@{self.postgres[0]}:{self.postgres[1]}/{name or self.database}"


class Topology:
    """The hosts, their bridge and the two servers, torn down by ``close`` (``with`` block, atexit)."""

    def __init__(self) -> None:
        reason = unavailable_reason()
        if reason:
            raise Unavailable(reason)
        self.dir = Path(tempfile.mkdtemp(prefix=RUN_DIR_GLOB))
        self.servers: list[subprocess.Popen[bytes]] = []
        self.description = Description(
            hosts={h: address(h) for h in HOSTS}, namespaces={h: ns(h) for h in HOSTS}, gateway=GATEWAY,
            redis=(address("redis"), REDIS_PORT), postgres=(address("postgres"), POSTGRES_PORT), database=DATABASE,
        )  # fmt: skip
        self._closed = False

    def __enter__(self) -> Topology:
        atexit.register(self.close)
        try:
            cleanup()
            self.dir.mkdir(parents=True, exist_ok=True)
            self._network()
            self._redis()
            self._postgres()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _network(self) -> None:
        _ip("link", "add", BRIDGE, "type", "bridge")
        _ip("addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
        _ip("link", "set", BRIDGE, "up")
        for host in HOSTS:
            name = ns(host)
            _ip("netns", "add", name)
            _ip("link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", name)
            _ip("link", "set", name, "master", BRIDGE)
            _ip("link", "set", name, "up")
            _ip("-n", name, "addr", "add", f"{address(host)}/24", "dev", "eth0")
            _ip("-n", name, "link", "set", "eth0", "up")
            _ip("-n", name, "link", "set", "lo", "up")

    def _start(self, host: str, argv: list[str], log: str) -> subprocess.Popen[bytes]:
        with (self.dir / log).open("wb") as out:
            proc = subprocess.Popen(
                self.description.argv(host, argv), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.servers.append(proc)
        return proc

    def _redis(self) -> None:
        data = self.dir / "redis"
        data.mkdir()
        self._start("redis", [
            shutil.which("redis-server") or "redis-server", "--bind", address("redis"), "--port", str(REDIS_PORT),
            "--protected-mode", "no", "--save", "", "--appendonly", "no", "--dir", str(data),
            "--maxmemory-policy", "noeviction", "--daemonize", "no",
        ], "redis.log")  # fmt: skip
        import redis

        client = redis.Redis(host=address("redis"), port=REDIS_PORT, socket_connect_timeout=0.5)
        try:
            _wait(client.ping, "redis-server", self.dir / "redis.log")
        finally:
            client.close()

    def _postgres(self) -> None:
        """initdb and start a cluster owned by ``postgres`` (the server refuses root), trust auth for the subnet,
        its socket in its own directory (the shared /var/run/postgresql belongs to the machine's own server)."""
        bin_dir = postgres_bin()
        assert bin_dir is not None
        data = self.dir / "pgdata"
        shutil.chown(self.dir, "postgres")
        as_postgres = ["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", "--"]
        subprocess.run(
            [*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync",
             "-E", "UTF8", "--locale=C.UTF-8"],
            check=True, capture_output=True,
        )  # fmt: skip
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {SUBNET}.0/24 trust\n")
        self._start("postgres", [
            *as_postgres, str(bin_dir / "postgres"), "-D", str(data), "-c", f"listen_addresses={address('postgres')}",
            "-c", f"port={POSTGRES_PORT}", "-c", f"unix_socket_directories={self.dir}", "-c", "fsync=off",
            "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=300",
        ], "postgres.log")  # fmt: skip
        import psycopg

        def connect() -> bool:
            try:
                with psycopg.connect(
                    self.description.database_url("postgres"), connect_timeout=1, autocommit=True
                ) as c:
                    c.execute(f"CREATE DATABASE {DATABASE}")
                return True
            except psycopg.OperationalError:
                return False

        _wait(connect, "postgres", self.dir / "postgres.log")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for proc in self.servers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.servers:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        cleanup()


def _wait(ready: object, what: str, log: Path) -> None:
    deadline = time.monotonic() + READY_S
    while True:
        try:
            if ready():  # type: ignore[operator]
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} on its host did not answer in {READY_S} s:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("action", nargs="?", choices=("run", "up"))
    parser.add_argument("--cleanup", action="store_true", help="remove leftovers by name prefix, then exit")
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    args, command = parser.parse_args(argv[:split]), argv[split + 1 :]
    if args.cleanup:
        reason = unavailable_reason()
        if reason and os.geteuid() != 0:
            print(f"hosts: cannot clean up: {reason}", file=sys.stderr)
            return 2
        cleanup(verbose=True)
        return 0
    if args.action is None:
        parser.error("name an action (run, up) or --cleanup")
    if args.action == "run" and not command:
        parser.error("run needs a command after --")
    reason = unavailable_reason()
    if reason:
        if args.action == "up":
            print(f"hosts: refused: {reason}", file=sys.stderr)
            return 2
        print(f"hosts: not built ({reason}); running the command with HOSTS_UNAVAILABLE set", flush=True)
        return subprocess.run(command, env={**os.environ, "HOSTS_UNAVAILABLE": reason}).returncode
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # make killed, CI cancelled: the finally tears down
    started = time.monotonic()
    with Topology() as topology:
        d = topology.description
        print(f"hosts: {', '.join(f'{h} {a}' for h, a in d.hosts.items())} on {BRIDGE}; redis {d.redis_url()}, "
              f"postgres {d.database_url()}; ready in {time.monotonic() - started:.1f} s", flush=True)  # fmt: skip
        if args.action == "up":
            try:
                signal.pause()
            except KeyboardInterrupt:
                pass
            return 0
        env = {
            **os.environ,
            "HOSTS_TOPOLOGY": d.to_json(),
            "DATABASE_URL": d.database_url(),
            "REDIS_URL": d.redis_url(),
        }
        env.pop("BUFFER_REDIS_URL", None)
        try:
            return subprocess.run(command, env=env).returncode
        finally:
            print("hosts: torn down", flush=True)


if __name__ == "__main__":
    sys.exit(main())
