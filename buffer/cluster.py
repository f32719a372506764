"""The buffer's client for a Redis Cluster (``BUFFER_REDIS_URL=redis+cluster://…``, docs/operations.md#redis-cluster).

Every key of shard *k* carries the hash tag ``{m<k>}``, so each script call, each MULTI/EXEC and each
multi-key command of the buffer touches one slot, and the code above runs unchanged on a cluster — with two
exceptions that this module absorbs:

1. redis-py refuses EVALSHA inside a cluster pipeline, and the buffer pipelines its script calls (a round's
   leases, the gauges of every shard, a sweep pass). ``BufferCluster.pipeline()`` (non-transactional)
   returns a ``NodePipeline``: it records the commands, then sends one ordinary pipeline per master that
   owns one of their keys, and hands the replies back in call order. A pipeline is not atomic on a single
   server either; each script call still is. A command without a key (``WAIT``) goes with the command
   before it, to the same connection: WAIT counts the replicas that have that connection's writes.
2. ``TIME`` goes to one fixed master (the owner of slot 0), so every drainer compares lease deadlines
   against the same clock, as on a single server.

``pipeline(transaction=True)`` stays redis-py's cluster transaction: one slot, else it raises
``CrossSlotTransactionError`` before sending anything. A script whose declared keys span two slots fails
in the client (``RedisClusterException``); one that touches an undeclared key of another slot fails in
the server ("non local key"). Both are loud; tests/buffer/test_cluster.py proves it.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.cluster import ClusterNode
from redis.commands.core import Script
from redis.exceptions import RedisClusterException, SlotNotCoveredError

from buffer.script_pipeline import script_pipeline

# Commands whose first argument is not the key: where their key is.
_KEY_POSITION = {"evalsha": 2, "eval": 2}


class BufferCluster(redis.RedisCluster):
    """``redis.RedisCluster`` that remembers its registered scripts, so a ``NodePipeline`` can load one
    on a master that has lost it (a restart, a failover: Redis does not replicate its script cache).

    A cluster that cannot be reached raises ``redis.ConnectionError`` — a ``BufferUnavailable``, as on a
    single server, so the trigger path fails open — where redis-py raises its own ``RedisClusterException``
    (no node answers at start-up, a slot no reachable node serves). Its other ``RedisClusterException`` errors
    are bugs (keys of two slots in one call) and stay as they are: loud."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().__init__(*args, **kwargs)
        except RedisClusterException as exc:
            raise redis.ConnectionError(f"Redis Cluster unreachable: {exc}") from exc
        self.scripts_by_sha: dict[str, Script] = {}

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            # RedisCluster's own (what super() finds), named so that mypy sees redis-py's unannotated method.
            return redis.RedisCluster.execute_command(self, *args, **kwargs)
        except SlotNotCoveredError as exc:
            raise redis.ConnectionError(f"Redis Cluster slot unavailable: {exc}") from exc

    def register_script(self, script: Any) -> Script:
        registered = super().register_script(script)
        self.scripts_by_sha[registered.sha] = registered
        return registered

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        if transaction:
            return redis.RedisCluster.pipeline(self, transaction=transaction, shard_hint=shard_hint)
        return NodePipeline(self)

    def time(self, **kwargs: Any) -> Any:
        return super().time(target_nodes=self.nodes_manager.get_node_from_slot(0), **kwargs)


class NodePipeline:
    """The subset of a redis-py pipeline the buffer uses — any command method, then ``execute`` — sent as
    one plain pipeline per master (see the module docstring)."""

    def __init__(self, cluster: BufferCluster) -> None:
        self._cluster = cluster
        self._calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        def record(*args: Any, **kwargs: Any) -> NodePipeline:
            self._calls.append((name, args, kwargs))
            return self

        return record

    def __len__(self) -> int:
        return len(self._calls)

    def __enter__(self) -> NodePipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self._calls = []

    def _node_of(self, name: str, args: tuple[Any, ...]) -> ClusterNode | None:
        position = _KEY_POSITION.get(name, 0)
        if name == "execute_command":
            name, args = str(args[0]).lower(), args[1:]
            position = _KEY_POSITION.get(name, 0)
        if name in ("wait", "ping", "time") or len(args) <= position:
            return None
        key = args[position]
        if isinstance(key, list | tuple):
            key = key[0]
        node: ClusterNode | None = self._cluster.get_node_from_key(key)
        return node

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        calls, self._calls = self._calls, []
        groups: dict[str, tuple[ClusterNode, list[int]]] = {}
        node: ClusterNode | None = None
        for i, (name, args, _) in enumerate(calls):
            node = self._node_of(name, args) or node or self._cluster.get_default_node()
            groups.setdefault(node.name, (node, []))[1].append(i)
        replies: list[Any] = [None] * len(calls)
        for node, indexes in groups.values():
            pipe = script_pipeline(self._cluster.get_redis_connection(node))
            for i in indexes:
                name, args, kwargs = calls[i]
                if name == "evalsha" and args[0] in self._cluster.scripts_by_sha:
                    pipe.scripts.add(self._cluster.scripts_by_sha[args[0]])  # loaded there on NOSCRIPT
                getattr(pipe, name)(*args, **kwargs)
            for i, reply in zip(indexes, pipe.execute(raise_on_error=False), strict=True):
                replies[i] = reply
        if raise_on_error:
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        return replies


def primaries(client: redis.Redis | redis.RedisCluster) -> list[redis.Redis]:
    """A plain client per master of a cluster, or ``[client]`` for a single server: what the system checks ask."""
    if isinstance(client, redis.RedisCluster):
        return [client.get_redis_connection(node) for node in client.get_primaries()]
    return [client]
