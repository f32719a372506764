"""The buffer's Redis clients: one per process, URL and caller profile, with its registered scripts
(docs/operations.md#redis-timeouts-and-the-circuit-breaker).

``client_for`` builds and caches them; ``Buffer.from_settings`` (``buffer.core``) is how the product gets one.
Every client decodes replies as ``CLIENT_OPTIONS`` says, which ``Buffer`` checks. ``redis_client`` makes the
client a URL's kind asks for: a single server, a cluster, or a Sentinel-managed primary.
"""

from __future__ import annotations

import threading
from typing import Any, Literal

import redis
from django.conf import settings
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection, SentinelManagedSSLConnection

from buffer.breaker import Breaker, guarded_connection_class
from buffer.cluster import BufferCluster
from buffer.script_pipeline import BufferRedis
from buffer.scripts import Scripts
from mollifier_project.config import MollifierSettings, RedisLocation, SentinelLocation, redis_location

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


def redis_client(location: RedisLocation, *, breaker: Breaker | None = None, **options: Any) -> redis.Redis:
    """A new client of ``location`` with ``options`` (redis-py's), its connections guarded by ``breaker`` if given:
    a ``BufferCluster`` for a cluster; for Sentinel, the monitored primary's client, whose every new connection
    asks the sentinels where the primary is now — so after a failover the next call reaches the promoted replica,
    and a call that finds the old primary demoted (READONLY) fails as a ``ConnectionError`` (no primary) and
    drops that connection (docs/operations.md#redis-sentinel)."""
    if location.sentinel is not None:
        return _sentinel_primary(location.sentinel, breaker, options)
    if breaker is not None:
        options["connection_class"] = guarded_connection_class(location.url, breaker)
    if location.cluster:
        return BufferCluster.from_url(location.url, **options)  # type: ignore[return-value]  # same command API
    return BufferRedis.from_url(location.url, **options)


def _sentinel_primary(where: SentinelLocation, breaker: Breaker | None, options: dict[str, Any]) -> redis.Redis:
    """``Sentinel.master_for``: the sentinels are asked with the same timeouts as the primary (a sentinel that
    does not answer costs a call no more than the primary would), and their own credentials."""
    asking: dict[str, Any] = {k: v for k, v in options.items() if k in ("socket_connect_timeout", "socket_timeout")}
    if where.sentinel_username:
        asking["username"] = where.sentinel_username
    if where.sentinel_password:
        asking["password"] = where.sentinel_password
    if where.tls:
        asking["ssl"] = True
    base: type = SentinelManagedSSLConnection if where.tls else SentinelManagedConnection
    connection_class = guarded_connection_class("", breaker, base) if breaker is not None else base
    sentinel = Sentinel(list(where.hosts), sentinel_kwargs=asking)
    client: redis.Redis = sentinel.master_for(
        where.service, redis_class=BufferRedis, connection_class=connection_class, db=where.db,
        username=where.username, password=where.password, **options,
    )  # fmt: skip
    return client


def client_for(
    url: str, profile: Profile = "worker", cfg: MollifierSettings | None = None
) -> tuple[redis.Redis, Scripts]:
    """The process-wide client of ``profile`` for ``url`` (str replies) and its registered scripts; a
    ``BufferCluster`` for a ``redis+cluster://`` URL (``buffer.cluster``), a Sentinel-managed primary's for a
    ``redis+sentinel://`` one (``redis_client``). ``cfg``: the MOLLIFIER settings
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
                    retry=Retry(NoBackoff(), retries=0),
                )  # fmt: skip
            else:
                options.update(
                    socket_connect_timeout=1.0, socket_timeout=shape[0] / 1000,
                    retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), retries=1),
                )  # fmt: skip
            client = redis_client(location, breaker=breaker, **options)
            client.mollifier_breaker = breaker  # type: ignore[attr-defined]  # read by breaker_of
            _clients[cache_key] = (client, Scripts.register(client))
        return _clients[cache_key]
