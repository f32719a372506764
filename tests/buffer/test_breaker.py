"""The request path's circuit breaker (buffer/breaker.py, docs/operations.md#redis-timeouts-and-the-circuit-breaker)
in a real client's connections, against a redis-server of the test's own that is SIGSTOPped: it opens after
the configured failures, fails calls without sending them while open, lets a probe through afterwards (a failed
probe opens it again, an answer closes it), and takes an error reply for an answer. The clock is the test's,
so no assertion depends on how fast the box is."""

from __future__ import annotations

import signal

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from buffer import metrics
from buffer.breaker import Breaker, BreakerOpen, guarded_connection_class
from tests.redis_servers import redis_server


@pytest.mark.single_redis("SIGSTOPs a redis-server of its own")
def test_the_breaker_opens_fails_fast_probes_and_closes(tmp_path):
    now = [100.0]
    breaker = Breaker(failures=2, open_ms=1000, clock=lambda: now[0])
    with redis_server(tmp_path / "redis") as server:
        client = redis.Redis.from_url(
            server.url, socket_timeout=0.2, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0),
            connection_class=guarded_connection_class(server.url, breaker),
        )  # fmt: skip
        try:
            assert client.ping() and breaker.state == "closed" and breaker.failing_for_ms() is None
            server.proc.send_signal(signal.SIGSTOP)
            try:
                with pytest.raises(redis.TimeoutError):
                    client.ping()
                assert breaker.state == "closed"  # one failure of two
                now[0] += 0.5
                with pytest.raises(redis.TimeoutError):
                    client.ping()
                assert breaker.state == "open" and breaker.failing_for_ms() == 500
                rejected = metrics.REDIS_BREAKER_REJECTED._value.get()
                with pytest.raises(BreakerOpen):  # raised before anything is sent
                    client.set("k", "v")
                assert metrics.REDIS_BREAKER_REJECTED._value.get() == rejected + 1
                now[0] += 1.0
                assert breaker.state == "half-open"
                with pytest.raises(redis.TimeoutError):  # the probe went to Redis, and failed
                    client.ping()
                assert breaker.state == "open" and breaker.failing_for_ms() == 1500
            finally:
                server.proc.send_signal(signal.SIGCONT)
            now[0] += 1.0
            assert client.ping()  # the probe is answered
            assert breaker.state == "closed" and breaker.failing_for_ms() is None
            assert client.get("k") is None  # the call refused while open never reached Redis

            server.proc.send_signal(signal.SIGSTOP)
            try:
                for _ in range(2):
                    with pytest.raises(redis.TimeoutError):
                        client.ping()
            finally:
                server.proc.send_signal(signal.SIGCONT)
            now[0] += 1.0
            with pytest.raises(redis.ResponseError):  # an error reply is an answer: Redis is there
                client.execute_command("NO-SUCH-COMMAND")
            assert breaker.state == "closed"
        finally:
            client.close()
