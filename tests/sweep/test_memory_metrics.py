"""The buffer's Redis memory on /metrics (docs/operations.md#buffer-memory): used and max bytes, read with
``INFO memory`` at scrape time from every master, against a ``redis-server`` of the test's own."""

from __future__ import annotations

import redis

from buffer.buffer import Buffer
from buffer.client import CLIENT_OPTIONS
from tests.redis_servers import redis_server
from tests.sweep.test_metrics import scrape


def test_the_scrape_reports_used_and_max_memory_of_the_buffers_redis(tmp_path):
    with redis_server(tmp_path / "r", "--maxmemory", "50mb", "--maxmemory-policy", "noeviction") as server:
        client = redis.Redis.from_url(server.url, **CLIENT_OPTIONS)
        buffer = Buffer(client, prefix="memmetrics", shards=2)
        node = f"127.0.0.1:{server.port}"

        empty = scrape(buffer)
        client.set("memmetrics:filler", "x" * 2_000_000)
        filled = scrape(buffer)
        client.close()

    assert empty["mollifier_buffer_memory_max_bytes"] == {(("node", node),): 50 * 1024 * 1024}
    used_empty = empty["mollifier_buffer_memory_used_bytes"][(("node", node),)]
    used_filled = filled["mollifier_buffer_memory_used_bytes"][(("node", node),)]
    assert 0 < used_empty < 50 * 1024 * 1024
    assert used_filled - used_empty > 1_900_000  # the 2 MB string (and the query buffer that carried it)


def test_without_maxmemory_the_max_is_reported_as_zero(tmp_path):
    with redis_server(tmp_path / "r") as server:
        client = redis.Redis.from_url(server.url, **CLIENT_OPTIONS)
        samples = scrape(Buffer(client, prefix="memmetrics", shards=1))
        client.close()
    assert list(samples["mollifier_buffer_memory_max_bytes"].values()) == [0]
