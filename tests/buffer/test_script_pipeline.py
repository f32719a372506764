"""The buffer's pipelines of script calls cost one round trip, and survive a server that lost its scripts
(``buffer.script_pipeline``, docs/operations.md#round-trips).

redis-py's pipeline asks ``SCRIPT EXISTS`` before every ``execute``: a pipelined round of leases cost two round
trips. A redis-server of the test's own (its script cache is flushed here), behind the counting proxy.
"""

from __future__ import annotations

import pytest

from buffer.script_pipeline import BufferRedis
from tests.redis_servers import redis_server
from tests.round_trips import counted_client

pytestmark = pytest.mark.single_redis("flushes the script cache of a redis-server of its own")

PUSH = "redis.call('RPUSH', KEYS[1], ARGV[1]) return redis.call('LLEN', KEYS[1])"


def test_a_pipeline_of_script_calls_is_one_round_trip_and_each_call_runs_once_after_a_flush(tmp_path, settings):
    with redis_server(tmp_path / "redis") as server:
        settings.REDIS_URL = server.url
        with counted_client() as (client, flights):
            push = client.register_script(PUSH)

            def pipelined(*values: str, wait: bool = False) -> list:
                pipe = client.pipeline(transaction=False)
                for value in values:
                    push(keys=["log"], args=[value], client=pipe)
                if wait:
                    pipe.execute_command("WAIT", 0, 0)
                return pipe.execute()

            assert pipelined("warm") == [1]  # the server had no script: NOSCRIPT, loaded, sent again
            before = flights()
            assert pipelined("a", "b", "c") == [2, 3, 4]
            assert flights() - before == 1  # redis-py's pipeline: 2 (SCRIPT EXISTS, then the pipeline)

            client.script_flush()  # a restart or a failover loses the cache the same way
            before = flights()
            assert pipelined("d", "e") == [5, 6]
            assert flights() - before == 3  # the pipeline (NOSCRIPT twice), SCRIPT LOAD, the two again

            # A pipeline with another command keeps redis-py's check first, so WAIT follows the call it counts.
            client.script_flush()
            before = flights()
            assert pipelined("f", wait=True) == [7, 0]
            assert flights() - before == 3  # SCRIPT EXISTS, SCRIPT LOAD, the pipeline
            assert client.lrange("log", 0, -1) == ["warm", "a", "b", "c", "d", "e", "f"]  # each once, in order


def test_a_transaction_keeps_redis_pys_check_and_stays_whole(tmp_path, settings):
    with redis_server(tmp_path / "redis") as server:
        client = BufferRedis.from_url(server.url, decode_responses=True)
        push = client.register_script(PUSH)
        pipe = client.pipeline(transaction=True)
        push(keys=["log"], args=["a"], client=pipe)
        push(keys=["log"], args=["b"], client=pipe)
        assert pipe.execute() == [1, 2]  # loaded before MULTI: nothing of the transaction is sent twice
        assert client.lrange("log", 0, -1) == ["a", "b"]
        client.close()
