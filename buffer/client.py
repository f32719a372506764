"""The buffer's Redis clients: one per process, URL and caller profile, with its registered scripts
(docs/operations.md#redis-timeouts-and-the-circuit-breaker).

``client_for`` builds and caches them; ``Buffer.from_settings`` (``buffer.core``) is how the product gets one.
Every client decodes replies as ``CLIENT_OPTIONS`` says, which ``Buffer`` checks.
"""

from __future__ import annotations

import threading
from typing import Any, Literal

import redis
from django.conf import settings
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from buffer.breaker import Breaker, guarded_connection_class
from buffer.cluster import BufferCluster
from buffer.scripts import Scripts
from mollifier_project.config import MollifierSettings, redis_location

CLIENT_OPTIONS: dict[str, Any] = {"decode_responses": True, "encoding_errors": "surrogateescape"}
"""What every client of the buffer needs: ``str`` replies, and compressed snapshots (binary) that survive
the decoding — an undecodable byte becomes a lone surrogate, which ``buffer.stored_snapshot`` turns back into
that byte. Valid UTF-8, i.e. everything else the buffer stores, decodes as usual."""


def uses_client_options(client: redis.Redis) -> bool:
    """Whether ``client`` decodes replies as ``CLIENT_OPTIONS`` says (a single server or a cluster)."""
    encoder = client.get_encoder()
    return bool(encoder.decode_responses) and encoder.encoding_errors == CLIENT_OPTIONS["encoding_errors"]


Profile = Literal["request", "operator", "worker"]
"""Whose calls a client carries (docs/operations.md#redis-timeouts-and-the-circuit-breaker): ``request`` — an API
request's (short timeouts, no retry, a circuit breaker); ``operator`` — the admin's pages and actions (scans of
every shard: a longer timeout, no retry, a breaker of its own); ``worker`` — the drain's and the sweep's (a
longer timeout, one quick retry, no breaker: the drain has its own outage circuit)."""


_clients: dict[tuple[str, Profile, tuple[int, ...]], tuple[redis.Redis, Scripts]] = {}


_clients_lock = threading.Lock()


def buffer_redis_url() -> str:
    """The buffer's Redis: ``BUFFER_REDIS_URL``, else ``REDIS_URL`` (read at call time, so a test that points
    ``settings.REDIS_URL`` at a server of its own moves the buffer with it)."""
    return settings.BUFFER_REDIS_URL or settings.REDIS_URL


def breaker_of(client: redis.Redis) -> Breaker | None:
    """The circuit breaker in ``client``'s connections (request and operator clients of ``client_for``), else None."""
    found = getattr(client, "mollifier_breaker", None)
    return found if isinstance(found, Breaker) else None


def client_for(
    url: str, profile: Profile = "worker", cfg: MollifierSettings | None = None
) -> tuple[redis.Redis, Scripts]:
    """The process-wide client of ``profile`` for ``url`` (str replies) and its registered scripts; a
    ``BufferCluster`` for a ``redis+cluster://`` URL (``buffer.cluster``). ``cfg``: the MOLLIFIER settings
    (default: the current ones), whose timeouts and breaker shape the client.

    ``request``: connect and reply timeout ``REDIS_REQUEST_TIMEOUT_MS`` (plus ``ACCEPT_WAIT_MS`` when accepts
    wait for a replica), no retry, and a circuit breaker (``buffer.breaker``) in its connections — a hung Redis
    costs a web request a fraction of a second, then nothing while the breaker is open. ``operator``: the same
    with reply timeout ``REDIS_OPERATOR_TIMEOUT_MS`` and a breaker of its own. ``worker``: reply
    timeout ``REDIS_WORKER_TIMEOUT_MS``, connect timeout 1 s and one quick retry (redis-py's default retries
    three times with up to seconds of backoff). A retried ``accept`` whose first attempt did run answers
    DUPLICATE for its own run id: that means "accepted".
    """
    cfg = cfg or settings.MOLLIFIER
    trips = (cfg.REDIS_BREAKER_FAILURES, cfg.REDIS_BREAKER_OPEN_MS)
    if profile == "request":
        wait_ms = cfg.ACCEPT_WAIT_MS if cfg.ACCEPT_DURABILITY == "replica" else 0
        shape: tuple[int, ...] = (cfg.REDIS_REQUEST_TIMEOUT_MS + wait_ms, *trips)
    elif profile == "operator":
        shape = (cfg.REDIS_OPERATOR_TIMEOUT_MS, *trips)
    else:
        shape = (cfg.REDIS_WORKER_TIMEOUT_MS,)
    with _clients_lock:
        cache_key = (url, profile, shape)
        if cache_key not in _clients:
            location = redis_location(url)
            options: dict[str, Any] = dict(CLIENT_OPTIONS, health_check_interval=30)
            breaker: Breaker | None = None
            if profile != "worker":
                timeout_s = shape[0] / 1000
                breaker = Breaker(failures=shape[1], open_ms=shape[2], profile=profile)
                options.update(
                    socket_connect_timeout=min(timeout_s, cfg.REDIS_REQUEST_TIMEOUT_MS / 1000), socket_timeout=timeout_s,
                    retry=Retry(NoBackoff(), retries=0), connection_class=guarded_connection_class(location.url, breaker),
                )  # fmt: skip
            else:
                options.update(
                    socket_connect_timeout=1.0, socket_timeout=shape[0] / 1000,
                    retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), retries=1),
                )  # fmt: skip
            client: redis.Redis = (
                BufferCluster.from_url(location.url, **options)  # type: ignore[assignment]  # same command API
                if location.cluster
                else redis.Redis.from_url(location.url, **options)
            )
            client.mollifier_breaker = breaker  # type: ignore[attr-defined]  # read by breaker_of
            _clients[cache_key] = (client, Scripts.register(client))
        return _clients[cache_key]
