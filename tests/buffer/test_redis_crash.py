"""A buffer Redis SIGKILLed in the middle of a stream of accepts and restarted from its data directory:
with AOF every answered accept survives (``always``; ``everysec`` too — a killed process loses nothing its
kernel already has, the second at risk is a machine crash's); without AOF every one is lost. The loss is
counted and the figures printed (docs/operations.md#durability-and-appendfsync)."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from buffer.buffer import Buffer
from buffer.client import CLIENT_OPTIONS
from buffer.values import AcceptStatus
from tests.redis_servers import RedisServer

ACCEPT_S = 1.5  # accepting for this long before the kill


def _stream_until_killed(url: str, answered: list[str]) -> None:
    client = redis.Redis.from_url(url, **CLIENT_OPTIONS, socket_timeout=2)
    buffer = Buffer(client, prefix="crash", shards=1)
    i = 0
    while True:
        run_id = f"run_{i:025d}"
        try:
            result = buffer.accept(run_id=run_id, env_id=1, org_id=1, snapshot='{"p":1}', now_ms=i,
                                   idempotency=None, max_per_env=10_000_000)  # fmt: skip
        except redis.RedisError:
            return  # the server is gone: this accept was never answered
        assert result.status is AcceptStatus.ACCEPTED
        answered.append(run_id)
        i += 1


@pytest.mark.slow
@pytest.mark.parametrize("fsync", ["always", "everysec", "no-aof"])
def test_answered_accepts_survive_a_sigkill_with_aof(tmp_path, fsync):
    aof = ["--appendonly", "no"] if fsync == "no-aof" else ["--appendonly", "yes", "--appendfsync", fsync]
    server = RedisServer(tmp_path / "redis", *aof).start()
    answered: list[str] = []
    try:
        streamer = threading.Thread(target=_stream_until_killed, args=(server.url, answered))
        streamer.start()
        time.sleep(ACCEPT_S)
        server.kill()
        streamer.join(10)
        server.start()  # same port and data directory: it loads what the AOF holds
        client = redis.Redis.from_url(server.url, **CLIENT_OPTIONS)
        restarted = Buffer(client, prefix="crash", shards=1)
        kept = sum(1 for got in restarted.get_many(answered, org_id=1, snapshot=False) if got is not None)
        depth = restarted.depth(0, 1)
        client.close()
    finally:
        server.stop()

    lost = len(answered) - kept
    rate = len(answered) / ACCEPT_S
    print(f"\nappendfsync {fsync}: {len(answered)} accepts answered in {ACCEPT_S} s ({rate:,.0f}/s); "
          f"after SIGKILL + restart {kept} kept, {lost} lost; queue depth {depth}")  # fmt: skip
    assert answered, "nothing was accepted before the kill"
    assert depth >= kept  # nothing half-written: every kept entry is in its queue
    if fsync == "no-aof":
        assert kept == 0  # --save "": nothing on disk at all
    elif fsync == "always":
        assert lost == 0
    else:
        assert lost <= rate * 2  # at most about a second of accepts (two, for slack on a busy machine)
