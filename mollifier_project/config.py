"""The one typed settings object for Mollifier (docs/architecture.md#settings).

Every setting NAME is read once from the environment variable ``MOLLIFIER_<NAME>``. Values are parsed
strictly: a bad value fails start-up with the variable's name in the message, because a drainer that
silently runs with ``SHARDS=0`` or a flag that silently reads ``maybe`` as off is worse than no drainer.
Combinations that are individually valid but wrong together are Django system checks
(``mollifier_project/checks.py``), so ``manage.py check`` reports them all at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

ENV_PREFIX = "MOLLIFIER_"

# The longest the SDK (4.x) keeps retrying one trigger call with the same request key, first attempt to the
# last attempt's answer: 5 attempts with back-offs of 1, 1.6, 2.56 and 4.1 s (a 429 waits for x-ratelimit-reset
# instead, about 2 s here), each attempt lasting at most gunicorn's 30 s timeout: 9.3 s + 5 × 30 s ≈ 160 s
# (docs/operations.md#request-key-lifetime).
SDK_RETRY_WINDOW_S = 160

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


class MollifierSettings(BaseModel):
    """Immutable, validated settings. Attribute names are the docs/architecture.md#settings names."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Feature flags: all default off, so a deploy changes nothing until an operator opts in.
    ENABLED: bool = False
    DRAINER_ENABLED: bool = False
    STALE_SWEEP_ENABLED: bool = False
    SHADOW_MODE: bool = False

    SHARDS: int = Field(16, ge=1, le=16384)
    KEY_PREFIX: str = Field("mollifier", min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    TRIP_WINDOW_MS: int = Field(200, ge=1)
    TRIP_THRESHOLD: int = Field(100, ge=0)
    HOLD_MS: int = Field(500, ge=0)
    # The fan-out tick: an idle shard that receives work waits at most this long for its drain (plus a free
    # worker). Idle, a tick costs one pipelined has-work check of every shard (docs/operations.md#celery).
    DRAIN_INTERVAL_S: float = Field(1.0, gt=0)
    DRAIN_TIME_BUDGET_MS: int = Field(2000, ge=1)
    # Several celery beats, one ticking (docs/operations.md#several-beats): on, each beat sends only while it
    # holds a lease in the buffer's Redis of BEAT_LEASE_MS, renewed every BEAT_RENEW_MS; a standby takes over
    # within BEAT_LEASE_MS + BEAT_RENEW_MS of the active beat's death. Off: every beat started ticks.
    BEAT_LEASE_ENABLED: bool = False
    BEAT_LEASE_MS: int = Field(10_000, ge=1000, le=600_000)
    BEAT_RENEW_MS: int = Field(2_000, ge=100)
    # The dashboard charts (docs/operations.md#dashboard-charts): one fan-out tick per this many seconds keeps a
    # sample of every shard (two Redis round trips; the other ticks pay nothing more). 0: no samples, no charts.
    CHART_SAMPLE_S: int = Field(15, ge=0, le=600)
    # The kick (docs/architecture.md#kick): an accept into a shard with no drain task sends the shard's task at
    # once, and a task that ends with work due sends its successor, so a buffered run waits for a worker, not
    # for a tick; the tick stays as the safety net. On by default (docs/operations.md#kick): the crash-loop
    # chaos test drains as fast with it as without it once workers do not prefetch (settings.py).
    DRAIN_KICK: bool = True
    # Lease round n + 1 on a second thread while round n commits (docs/architecture.md#drain-throughput).
    # Off by default: a killed worker then leaves two rounds in flight, whose reclaimed entries are
    # written one at a time — twice the crash-recovery cost.
    DRAIN_LEASE_AHEAD: bool = False
    ROUND_BUDGET: int = Field(1000, ge=1)
    # Snapshot bytes one round may lease (split over its envs; each env takes at least one entry).
    ROUND_MAX_BYTES: int = Field(64 * 1024 * 1024, ge=1)
    MAX_ORGS_PER_ROUND: int = Field(500, ge=1)
    LEASE_MS: int = Field(30_000, ge=1)
    MAX_ATTEMPTS: int = Field(3, ge=1)
    STALE_THRESHOLD_S: int = Field(300, ge=1)
    SWEEP_INTERVAL_S: int = Field(300, ge=1)
    SWEEP_MAX_ORGS_PER_PASS: int = Field(100, ge=1)
    SWEEP_MAX_ENTRIES_PER_ENV: int = Field(1000, ge=1)
    ACK_GRACE_S: int = Field(30, ge=0)
    MUTATE_WAIT_MS: int = Field(2000, ge=0)
    # none: an accept is answered once the primary has it; replica: once a replica has it too (WAIT), or 503.
    ACCEPT_DURABILITY: Literal["none", "replica"] = "none"
    ACCEPT_WAIT_MS: int = Field(500, ge=1)
    MAX_PAYLOAD_BYTES: int = Field(3 * 1024 * 1024, ge=1)
    # Snapshots of at least this many bytes are stored zlib-compressed in Redis when that makes them smaller
    # (docs/operations.md#snapshot-compression); 0 stores every snapshot as plain JSON. Either way every
    # stored snapshot stays readable, so the setting can change at any time.
    SNAPSHOT_COMPRESS_MIN_BYTES: int = Field(256, ge=0)
    MAX_BUFFERED_PER_ENV: int = Field(1_000_000, ge=1)
    # Packets (docs/api.md#packets): the largest body one upload may store, how long a presigned download URL
    # lives, and how long an upload URL does: the SDK PUTs at once (its retries take well under a minute), and
    # a leaked upload URL for a path never written should not stay usable for an hour.
    MAX_PACKET_BYTES: int = Field(100 * 1024 * 1024, ge=1)
    PACKET_URL_TTL_S: int = Field(3600, ge=1)
    PACKET_PUT_URL_TTL_S: int = Field(600, ge=1)
    # A host of its own for the presigned packet URLs (e.g. https://packets.example.com), on which the browser
    # holds none of the app's cookies; empty: the request's own host. It must reach these same web processes
    # (in ALLOWED_HOSTS: check mollifier.E004) under a hostname that is not the app's (docs/api.md#packets).
    PACKET_ORIGIN: str = ""
    # Run metadata (docs/api.md#metadata): the JSON-encoded size a run's metadata may reach.
    MAX_METADATA_BYTES: int = Field(256 * 1024, ge=2)
    # The buffer's Redis as the web tier sees it (docs/operations.md#redis-timeouts-and-the-circuit-breaker):
    # connect and reply timeout of one call on the request path (triggers, API reads and mutations, /metrics,
    # the admin). A hung Redis costs a request this long, then the trigger fails open; ACCEPT_WAIT_MS is
    # added when ACCEPT_DURABILITY=replica (the WAIT shares the call).
    REDIS_REQUEST_TIMEOUT_MS: int = Field(250, ge=10, le=10_000)
    # After this many consecutive failed calls a web process stops calling Redis for REDIS_BREAKER_OPEN_MS
    # (every call fails at once: triggers fail open, reads answer 503), then lets one probe through.
    REDIS_BREAKER_FAILURES: int = Field(2, ge=1)
    REDIS_BREAKER_OPEN_MS: int = Field(2000, ge=1)
    # A request key Redis does not hold is trusted to be new only while the shard's fence (refreshed by every
    # keyed trigger) is younger than this; a web process writes keyed triggers to Postgres (with the key) only
    # after Redis has failed it this long, and answers them 503 before (docs/api.md#request-idempotency).
    REQUEST_KEY_FENCE_MS: int = Field(2000, ge=1)
    # How long a request key (Redis ``req:`` keys, and the ``runs_requestkey`` rows of a Redis outage) answers a
    # retry with the run it made. Only the client's own retries of one call reuse the key, and the SDK's are over
    # within SDK_RETRY_WINDOW_S; every trigger leaves one key, so this is the Redis memory a storm keeps after its
    # runs are rows (docs/operations.md#request-key-lifetime). Must exceed both (check mollifier.E007).
    REQUEST_KEY_TTL_S: int = Field(600, ge=1)
    # The admin's pages and actions (every shard's stats, a search over every shard, a selection's requeue): the
    # same breaker as the request path (one of its own), a longer timeout. A hung Redis costs a page this long.
    REDIS_OPERATOR_TIMEOUT_MS: int = Field(3000, ge=10, le=30_000)
    # The drain's and the sweep's commands: a lease of a 1,000-entry round or an env's
    # dead-lettering may take longer than a request's call; one quick retry after a broken connection.
    REDIS_WORKER_TIMEOUT_MS: int = Field(5000, ge=100)
    # Slow clients (docs/operations.md#slow-clients), applied by gunicorn's worker class: the whole request head
    # must arrive within HEAD_TIMEOUT_S of the connection; each body read and response write waits at most
    # IDLE_TIMEOUT_S; after the first IDLE_TIMEOUT_S the body must keep up BODY_MIN_RATE bytes/s, and it must be
    # complete within BODY_MAX_S, which the worker requires to be shorter than gunicorn's --timeout.
    WEB_HEAD_TIMEOUT_S: float = Field(10.0, gt=0)
    WEB_IDLE_TIMEOUT_S: float = Field(10.0, gt=0)
    WEB_BODY_MIN_RATE: int = Field(1024, ge=1)
    WEB_BODY_MAX_S: float = Field(20.0, gt=0)
    # Bearer token for /metrics; empty = the endpoint is open (bind it to a private network then).
    METRICS_TOKEN: SecretStr = SecretStr("")
    # Where operators read docs/runbook.md (an absolute http(s) URL of the page, no #anchor) and the admin's absolute
    # URL (…/admin): ``manage.py mollifier_ops render`` writes them into the alert rules' runbook_url and the Grafana
    # dashboard's links, which must work from inside Alertmanager and Grafana (docs/operations.md#alerts).
    RUNBOOK_URL: str = ""
    ADMIN_URL: str = ""

    @field_validator(
        "ENABLED",
        "DRAINER_ENABLED",
        "STALE_SWEEP_ENABLED",
        "SHADOW_MODE",
        "BEAT_LEASE_ENABLED",
        "DRAIN_KICK",
        mode="before",
    )
    @classmethod
    def _strict_flag(cls, value: object) -> object:
        """Accept only the spellings an operator means; ``maybe`` or ``ture`` is an error, not "off"."""
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError(f"expected one of true/false/1/0/yes/no/on/off, got {value!r}")

    @field_validator("RUNBOOK_URL", "ADMIN_URL")
    @classmethod
    def _absolute_url(cls, value: str) -> str:
        """Empty, or an absolute http(s) URL without query or fragment (an anchor or path is appended to it);
        a relative link is what breaks inside Grafana and Alertmanager."""
        if not value:
            return ""
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(
                "expected an absolute http(s) URL without ?query or #fragment, such as https://example.com/x"
            )
        return value.rstrip("/")

    @field_validator("PACKET_ORIGIN")
    @classmethod
    def _origin(cls, value: str) -> str:
        """An origin only (scheme, host, optional port): the URL's path is the packet route's."""
        if not value:
            return ""
        parts = urlsplit(value)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
            or parts.username
        ):
            raise ValueError("expected an origin such as https://packets.example.com (scheme and host, no path)")
        return f"{parts.scheme}://{parts.netloc}"


def load_settings(environ: Mapping[str, str] | None = None) -> MollifierSettings:
    """Parse ``MOLLIFIER_*`` from ``environ`` (default: the process environment).

    Raises ``ImproperlyConfigured`` naming every offending variable and its value.
    """
    if environ is None:
        import os

        environ = os.environ
    values = {key[len(ENV_PREFIX) :]: value for key, value in environ.items() if key.startswith(ENV_PREFIX)}
    known = set(MollifierSettings.model_fields)
    unknown = sorted(ENV_PREFIX + name for name in values if name not in known)
    if unknown:
        raise ImproperlyConfigured(f"Unknown Mollifier setting(s): {', '.join(unknown)}")
    try:
        return MollifierSettings.model_validate(values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = ENV_PREFIX + ".".join(str(part) for part in error["loc"])
            problems.append(f"{name}={values.get(name[len(ENV_PREFIX) :])!r}: {error['msg']}")
        raise ImproperlyConfigured("Invalid Mollifier setting(s): " + "; ".join(problems)) from None


CLUSTER_SUFFIX = "+cluster"
SENTINEL_SUFFIX = "+sentinel"
SENTINEL_DEFAULT_PORT = 26379
_SENTINEL_QUERY = frozenset({"sentinel_username", "sentinel_password"})


@dataclass(frozen=True, slots=True)
class SentinelLocation:
    """A Sentinel-managed primary (``redis+sentinel://``, docs/operations.md#redis-sentinel): the sentinels to
    ask, the name they monitor it under, and the database. ``username``/``password`` (the URL's userinfo) are
    the primary's and its replicas'; ``sentinel_username``/``sentinel_password`` (query parameters) the
    sentinels', which usually have a password of their own. ``tls``: ``rediss+sentinel://``, TLS to both."""

    hosts: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    tls: bool = False
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class RedisLocation:
    """Where the buffer's Redis is (``BUFFER_REDIS_URL``, else ``REDIS_URL``) and what kind it is.

    Cluster and Sentinel mode are part of the URL (``redis+cluster://host:port``, ``redis+sentinel://host:port/
    name``, ``rediss+…`` for TLS) rather than a flag of their own: a standalone client cannot talk to a cluster
    nor the reverse, so the two can never disagree, and every process handed the URL — a Celery worker, a child
    process of a test — gets the mode with it (docs/operations.md#redis-cluster)."""

    url: str  # what redis-py is given: redis://, rediss:// or unix://; for Sentinel the URL as written
    cluster: bool
    sentinel: SentinelLocation | None = None


def redis_location(url: str, variable: str = "BUFFER_REDIS_URL") -> RedisLocation:
    """Parse a buffer Redis URL; raise ``ImproperlyConfigured`` naming ``variable`` when it is unusable."""
    scheme, sep, rest = url.partition("://")
    if scheme.endswith(SENTINEL_SUFFIX) and sep:
        return RedisLocation(url, False, _sentinel_location(scheme.removesuffix(SENTINEL_SUFFIX), rest, url, variable))
    cluster = scheme.endswith(CLUSTER_SUFFIX)
    base = scheme.removesuffix(CLUSTER_SUFFIX)
    if not sep or base not in ({"redis", "rediss"} if cluster else {"redis", "rediss", "unix"}):
        raise ImproperlyConfigured(
            f"{variable}={redacted_url(url)!r}: expected redis://host:port/db, rediss://…, unix://…, for a Redis "
            "Cluster redis+cluster://host:port (any one node) or rediss+cluster://…, or for a Sentinel-managed "
            "primary redis+sentinel://host:port[,host:port…]/service_name[/db] or rediss+sentinel://…"
        )
    if cluster:
        path = rest.partition("?")[0].partition("/")[2]
        if path not in ("", "0"):
            raise ImproperlyConfigured(f"{variable}={redacted_url(url)!r}: a Redis Cluster has only database 0")
    return RedisLocation(f"{base}://{rest}", cluster)


def _sentinel_location(base: str, rest: str, url: str, variable: str) -> SentinelLocation:
    """``[user:password@]host:port[,host:port…]/service[/db][?sentinel_username=…&sentinel_password=…]``."""

    def refuse(problem: str) -> ImproperlyConfigured:
        return ImproperlyConfigured(
            f"{variable}={redacted_url(url)!r}: {problem} (expected redis+sentinel://[user:password@]host:port"
            "[,host:port…]/service_name[/db][?sentinel_password=…], or rediss+sentinel://…)"
        )

    if base not in ("redis", "rediss"):
        raise refuse(f"unknown scheme {base + SENTINEL_SUFFIX!r}")
    main, _, query = rest.partition("?")
    netloc, _, path = main.partition("/")
    userinfo, at, hosts_text = netloc.rpartition("@")
    username, _, password = userinfo.partition(":") if at else ("", "", "")
    hosts = []
    for item in hosts_text.split(","):
        host, colon, port_text = item.rpartition(":") if not item.endswith("]") else (item, "", "")
        if not colon:
            host, port_text = item, str(SENTINEL_DEFAULT_PORT)
        host = host.removeprefix("[").removesuffix("]")
        if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise refuse(f"sentinel address {item!r} is not host:port")
        hosts.append((host, int(port_text)))
    service, _, db_text = path.partition("/")
    if not service:
        raise refuse("no service name (the name the sentinels monitor the primary under)")
    if db_text and not db_text.isdigit():
        raise refuse(f"database {db_text!r} is not a number")
    params = parse_qs(query, keep_blank_values=True, strict_parsing=False)
    unknown = sorted(set(params) - _SENTINEL_QUERY)
    if unknown:
        raise refuse(f"unknown parameter(s) {', '.join(unknown)}")
    if any(len(values) > 1 for values in params.values()):
        raise refuse("a parameter is given twice")
    return SentinelLocation(
        hosts=tuple(hosts), service=unquote(service), db=int(db_text or 0), tls=base == "rediss",
        username=unquote(username) or None, password=unquote(password) or None,
        sentinel_username=params.get("sentinel_username", [""])[0] or None,
        sentinel_password=params.get("sentinel_password", [""])[0] or None,
    )  # fmt: skip


def redacted_url(url: str) -> str:
    """``url`` with its userinfo and any ``sentinel_password`` replaced by ``***``: it goes into error messages."""
    scheme, sep, rest = url.partition("://")
    main, question, query = rest.partition("?")
    credentials, at, host = main.rpartition("@")
    main = f"***@{host}" if at and credentials else main
    if "password" in query:
        query = "&".join(
            f"{name}=***" if name.endswith("password") else f"{name}{eq}{value}"
            for name, eq, value in (part.partition("=") for part in query.split("&"))
        )
    return f"{scheme}{sep}{main}{question}{query}"


def check_broker_redis_url(url: str) -> None:
    """``REDIS_URL`` is the Celery broker's default too, and Celery cannot use a cluster, nor read a
    ``redis+sentinel://`` URL (kombu spells Sentinel ``sentinel://`` with options of its own): refuse both there."""
    scheme = url.partition("://")[0]
    if scheme.endswith(CLUSTER_SUFFIX):
        raise ImproperlyConfigured(
            f"REDIS_URL={redacted_url(url)!r}: REDIS_URL is also the Celery broker (CELERY_BROKER_URL's default), which "
            "cannot be a Redis Cluster; put the cluster in BUFFER_REDIS_URL and keep REDIS_URL a single server"
        )
    if scheme.endswith(SENTINEL_SUFFIX):
        raise ImproperlyConfigured(
            f"REDIS_URL={redacted_url(url)!r}: REDIS_URL is also the Celery broker (CELERY_BROKER_URL's default), which "
            "does not read redis+sentinel:// URLs; put the Sentinel URL in BUFFER_REDIS_URL, and for the broker set "
            "CELERY_BROKER_URL=sentinel://host:port;sentinel://host:port with CELERY_BROKER_SENTINEL_MASTER "
            "(docs/operations.md#redis-sentinel)"
        )


def broker_transport_options(broker_url: str, master_name: str, sentinel_password: str = "") -> dict[str, object]:
    """kombu's ``broker_transport_options`` for ``broker_url``: for its Sentinel transport (``sentinel://``), the
    monitored name (``CELERY_BROKER_SENTINEL_MASTER``, required there) and the sentinels' password, if any."""
    if not broker_url.startswith("sentinel://"):
        return {}
    if not master_name:
        raise ImproperlyConfigured(
            "CELERY_BROKER_URL is a sentinel:// URL but CELERY_BROKER_SENTINEL_MASTER (the name the sentinels "
            "monitor the broker's primary under) is not set (docs/operations.md#redis-sentinel)"
        )
    options: dict[str, object] = {"master_name": master_name}
    if sentinel_password:
        options["sentinel_kwargs"] = {"password": sentinel_password}
    return options


DEVELOPMENT_SECRET_KEY = "dev-insecure-mollifier-secret-key-change-me"  # public: in the repository


def check_secret_key(key: str, *, debug: bool) -> str:
    """The ``SECRET_KEY`` to use: ``key`` (``DJANGO_SECRET_KEY``), or the repository's development key when
    ``debug`` is on and none is set. With ``debug`` off, a missing key or a development one (``dev-insecure-…``)
    is refused here, at settings import, since gunicorn and celery run no system checks: whoever knows a
    public key can sign session cookies and presigned packet URLs (docs/operations.md#secret-key)."""
    if key and not key.startswith("dev-insecure-"):
        return key
    if debug:
        return key or DEVELOPMENT_SECRET_KEY
    problem = "is not set" if not key else "is the repository's public development key"
    raise ImproperlyConfigured(
        f"DJANGO_SECRET_KEY {problem} and DJANGO_DEBUG is off: refusing to start, since anyone could sign "
        "sessions and presigned packet URLs with it. Set DJANGO_SECRET_KEY to a long random secret, the same on "
        "every process (python -c 'import secrets; print(secrets.token_urlsafe(50))'); for local runs, "
        "`make services` generates one in .data/secret_key and exports it in .data/services.env "
        "(`. .data/services.env`), or set DJANGO_DEBUG=1 for development."
    )
