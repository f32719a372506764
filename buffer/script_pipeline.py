"""Pipelines of script calls in one round trip (docs/operations.md#round-trips).

redis-py's pipeline asks the server ``SCRIPT EXISTS`` for every script in it before each ``execute`` — a round
trip of its own, so a pipelined round of leases (or a round's reclaim, promote and candidates) cost two. The
buffer's clients (``BufferRedis``, and a cluster's per-master pipelines) use ``ScriptPipeline`` instead: it sends
the calls as ``EVALSHA`` straight away, as a single script call does. A call the server answers ``NOSCRIPT``
(it lost its script cache: a restart, a failover, ``SCRIPT FLUSH``) did not run; its script is loaded and the
calls that got ``NOSCRIPT`` are sent again, in their order, so each call still runs exactly once.

A transaction (``MULTI``/``EXEC``) keeps redis-py's check first: re-sending part of a transaction would split it.
So does a pipeline with any command that is not a script call (``WAIT`` after an accept, reads beside scripts):
those commands would otherwise have run before the calls sent again.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.client import Pipeline
from redis.commands.core import Script
from redis.exceptions import NoScriptError


class ScriptPipeline(Pipeline):
    """redis-py's ``Pipeline`` without the ``SCRIPT EXISTS`` round trip when every command in it is a script call
    and it is not a transaction. A pipeline that mixes in other commands keeps the check: after a ``NOSCRIPT``
    they would have run before the calls sent again (``WAIT`` after an accept must count that accept)."""

    _lazy = False  # this execute sends its script calls unchecked

    def _atomic(self) -> bool:
        """MULTI/EXEC: asked for at creation (``transaction``, an attribute that shadows ``Redis.transaction``)
        or started with ``multi()``."""
        return bool(vars(self).get("transaction")) or bool(self.explicit_transaction)

    def load_scripts(self) -> None:
        if not self._lazy:
            super().load_scripts()  # type: ignore[no-untyped-call]

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        stack: list[tuple[tuple[Any, ...], dict[str, Any]]] = list(self.command_stack)
        if self._atomic() or not self.scripts or any(str(args[0]).upper() != "EVALSHA" for args, _ in stack):
            return super().execute(raise_on_error)
        scripts: dict[str, Script] = {script.sha: script for script in self.scripts}
        self._lazy = True
        try:
            replies = super().execute(raise_on_error=False)  # resets this pipeline
            missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
            if missing:
                for sha in dict.fromkeys(str(stack[i][0][1]) for i in missing):
                    if sha in scripts:
                        self.immediate_execute_command("SCRIPT LOAD", scripts[sha].script)  # type: ignore[no-untyped-call]
                self.reset()
                for i in missing:
                    args, options = stack[i]
                    self.pipeline_execute_command(*args, **options)
                for i, reply in zip(missing, super().execute(raise_on_error=False), strict=True):
                    replies[i] = reply
        finally:
            self._lazy = False
        if raise_on_error:
            for i, reply in enumerate(replies):
                if isinstance(reply, Exception):
                    self.annotate_exception(reply, i + 1, stack[i][0])  # type: ignore[no-untyped-call]
                    raise reply
        return replies


def script_pipeline(client: redis.Redis) -> ScriptPipeline:
    """A non-transactional ``ScriptPipeline`` on ``client``'s connections."""
    return ScriptPipeline(client.connection_pool, client.response_callbacks, False, None)


class BufferRedis(redis.Redis):
    """``redis.Redis`` whose pipelines are ``ScriptPipeline``s (the buffer's single-server and Sentinel clients)."""

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> ScriptPipeline:
        return ScriptPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
