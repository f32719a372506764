"""The buffer dashboard's Redis memory table (docs/operations.md#buffer-memory): the pure rows
(``sweep.dashboard.memory_rows``) and the page, against a ``redis-server`` of the test's own."""

from __future__ import annotations

import pytest

from buffer.values import NodeMemory
from sweep import dashboard
from tests.redis_servers import redis_server

pytestmark = pytest.mark.django_db


def test_memory_rows_say_how_full_each_master_is_with_the_alerts_thresholds():
    rows = dashboard.memory_rows(
        [NodeMemory("a:1", 50 * 2**20, 100 * 2**20), NodeMemory("b:2", 85, 100), NodeMemory("c:3", 97, 100),
         NodeMemory("d:4", 3 * 2**30, 0)]
    )  # fmt: skip
    assert [(r.node, r.level) for r in rows] == [("a:1", "ok"), ("b:2", "high"), ("c:3", "full"), ("d:4", "no limit")]
    assert (rows[0].used_text, rows[0].max_text, rows[0].percent_text) == ("50.0 MiB", "100.0 MiB", "50%")
    assert (rows[3].max_text, rows[3].percent_text) == ("no maxmemory", "—")


def test_the_dashboard_shows_the_memory_of_the_buffers_redis(admin_client, settings, tmp_path, mollifier_settings):
    with redis_server(tmp_path / "r", "--maxmemory", "64mb", "--maxmemory-policy", "noeviction") as server:
        settings.REDIS_URL = server.url
        settings.BUFFER_REDIS_URL = ""
        mollifier_settings(KEY_PREFIX="dashmem", SHARDS=2)
        page = admin_client.get("/admin/buffer/").content.decode()

    assert 'id="memory"' in page
    assert f"127.0.0.1:{server.port}" in page and "64.0 MiB" in page
