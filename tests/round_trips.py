"""Counting Redis round trips in tests: a client of the test run's Redis whose traffic goes through
``scripts/netproxy.py`` on loopback (no delay added), which counts the chunks a client sends upstream — one
per round trip, a pipeline being one (docs/operations.md#round-trips)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis
from django.conf import settings

from buffer.client import CLIENT_OPTIONS
from buffer.script_pipeline import BufferRedis
from scripts.netproxy import NetProxy


@contextmanager
def counted_client() -> Iterator[tuple[BufferRedis, Callable[[], int]]]:
    """(a buffer client through the proxy, connected already; a function returning its round trips so far)."""
    where = redis.Redis.from_url(settings.REDIS_URL).connection_pool.connection_kwargs
    with NetProxy() as proxy:
        port = proxy.add("redis", "127.0.0.1", (where.get("host", "127.0.0.1"), where.get("port", 6379)))
        client = BufferRedis(host="127.0.0.1", port=port, db=where.get("db", 0), **CLIENT_OPTIONS)
        client.ping()  # the connection's own set-up (CLIENT SETINFO, SELECT) is not what a test counts
        try:
            yield client, lambda: int(proxy.stats("redis")["flights"])
        finally:
            client.close()
