"""Settings (mollifier_project/config.py) and the system checks that guard their combinations (checks.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from pydantic import SecretStr

from buffer.checks import check_redis_eviction_policy
from mollifier_project.checks import check_mollifier_settings
from mollifier_project.config import (
    SentinelLocation,
    broker_transport_options,
    check_broker_redis_url,
    load_settings,
    redis_location,
)

DESIGN_DEFAULTS = {
    "ENABLED": False,
    "DRAINER_ENABLED": False,
    "STALE_SWEEP_ENABLED": False,
    "SHADOW_MODE": False,
    "SHARDS": 16,
    "KEY_PREFIX": "mollifier",
    "TRIP_WINDOW_MS": 200,
    "TRIP_THRESHOLD": 100,
    "HOLD_MS": 500,
    "DRAIN_INTERVAL_S": 1,
    "DRAIN_TIME_BUDGET_MS": 2000,
    # not in §14: several beats, one ticking (issue 20), docs/operations.md#several-beats
    "BEAT_LEASE_ENABLED": False,
    "BEAT_LEASE_MS": 10_000,
    "BEAT_RENEW_MS": 2_000,
    "CHART_SAMPLE_S": 15,  # not in §14: the dashboard charts' sample interval (issue 18), docs/operations.md
    "DRAIN_KICK": True,  # not in §14: the kick on idle → busy (issue 19), docs/architecture.md#kick
    "DRAIN_LEASE_AHEAD": False,
    "ROUND_BUDGET": 1000,
    "ROUND_MAX_BYTES": 64 * 1024 * 1024,
    "MAX_ORGS_PER_ROUND": 500,
    "LEASE_MS": 30_000,
    "MAX_ATTEMPTS": 3,
    "STALE_THRESHOLD_S": 300,
    "SWEEP_INTERVAL_S": 300,
    "SWEEP_MAX_ORGS_PER_PASS": 100,
    "SWEEP_MAX_ENTRIES_PER_ENV": 1000,
    "ACK_GRACE_S": 30,
    "MUTATE_WAIT_MS": 2000,
    "ACCEPT_DURABILITY": "none",
    "ACCEPT_WAIT_MS": 500,
    "MAX_PAYLOAD_BYTES": 3 * 1024 * 1024,
    "SNAPSHOT_COMPRESS_MIN_BYTES": 256,  # not in §14: snapshot compression (issue 11), docs/operations.md#redis
    # not in §14: the web tier's Redis timeouts and circuit breaker (issue 16), docs/operations.md#redis-timeouts-and-the-circuit-breaker
    "REDIS_REQUEST_TIMEOUT_MS": 250,
    "REDIS_BREAKER_FAILURES": 2,
    "REDIS_BREAKER_OPEN_MS": 2000,
    "REDIS_OPERATOR_TIMEOUT_MS": 3000,
    "REDIS_WORKER_TIMEOUT_MS": 5000,
    "REQUEST_KEY_FENCE_MS": 2000,  # not in §14: request keys across a Redis outage (issue 16), docs/api.md
    "MAX_PACKET_BYTES": 100 * 1024 * 1024,
    "PACKET_URL_TTL_S": 3600,
    "PACKET_PUT_URL_TTL_S": 600,
    "PACKET_ORIGIN": "",  # not in §14: an optional host of its own for packet URLs (issue 16), docs/api.md#packets  # not in §14: upload URLs live shorter than downloads (issue 16), docs/api.md#packets
    "MAX_METADATA_BYTES": 256 * 1024,
    "MAX_BUFFERED_PER_ENV": 1_000_000,
    "METRICS_TOKEN": SecretStr(""),  # not in §14: the optional /metrics bearer token (§12), off by default
    "RUNBOOK_URL": "",  # not in §14: the runbook's absolute URL for rendered alert rules (issue 18), docs/operations.md#alerts
    "ADMIN_URL": "",  # not in §14: the admin's absolute URL for the rendered Grafana links (issue 18), docs/operations.md#alerts
    # not in §14: how long the web tier waits for a slow client (docs/operations.md#slow-clients)
    "WEB_HEAD_TIMEOUT_S": 10.0,
    "WEB_IDLE_TIMEOUT_S": 10.0,
    "WEB_BODY_MIN_RATE": 1024,
    "WEB_BODY_MAX_S": 20.0,
    # not in §14: how long a request key answers a retry (docs/operations.md#request-key-lifetime)
    "REQUEST_KEY_TTL_S": 600,
}


# ------------------------------------------------------------------------------------------- parsing


def test_defaults_match_design_section_14():
    assert load_settings({}).model_dump() == DESIGN_DEFAULTS


def test_variables_outside_the_prefix_are_ignored():
    assert load_settings({"PATH": "/bin", "SHARDS": "0", "DATABASE_URL": "x"}).SHARDS == 16


def test_values_are_read_from_prefixed_variables():
    cfg = load_settings({"MOLLIFIER_SHARDS": "4", "MOLLIFIER_DRAIN_INTERVAL_S": "0.5", "MOLLIFIER_KEY_PREFIX": "m2"})

    assert (cfg.SHARDS, cfg.DRAIN_INTERVAL_S, cfg.KEY_PREFIX) == (4, 0.5, "m2")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MOLLIFIER_SHARDS", "0"),
        ("MOLLIFIER_ENABLED", "maybe"),
        ("MOLLIFIER_LEASE_MS", "thirty seconds"),
        ("MOLLIFIER_DRAIN_INTERVAL_S", "0"),
        ("MOLLIFIER_SNAPSHOT_COMPRESS_MIN_BYTES", "-1"),
        ("MOLLIFIER_KEY_PREFIX", "has space"),
        ("MOLLIFIER_SHADOW_MODE", "ture"),
        ("MOLLIFIER_PACKET_ORIGIN", "packets.example.com"),
        ("MOLLIFIER_PACKET_ORIGIN", "https://packets.example.com/path"),
        ("MOLLIFIER_PACKET_ORIGIN", "ftp://packets.example.com"),
        ("MOLLIFIER_WEB_BODY_MIN_RATE", "0"),
        ("MOLLIFIER_WEB_HEAD_TIMEOUT_S", "-1"),
        ("MOLLIFIER_BEAT_LEASE_ENABLED", "maybe"),
        ("MOLLIFIER_BEAT_LEASE_MS", "999"),
        ("MOLLIFIER_BEAT_RENEW_MS", "99"),
        ("MOLLIFIER_REQUEST_KEY_TTL_S", "0"),
        ("MOLLIFIER_REQUEST_KEY_TTL_S", "10m"),
    ],
)
def test_bad_value_raises_improperly_configured_naming_the_variable(variable, value):
    with pytest.raises(ImproperlyConfigured, match=variable) as caught:
        load_settings({variable: value})

    assert repr(value) in str(caught.value)


def test_every_bad_variable_is_named_at_once():
    with pytest.raises(ImproperlyConfigured) as caught:
        load_settings({"MOLLIFIER_SHARDS": "0", "MOLLIFIER_ENABLED": "maybe"})

    assert "MOLLIFIER_SHARDS" in str(caught.value)
    assert "MOLLIFIER_ENABLED" in str(caught.value)


def test_unknown_mollifier_variable_is_refused_by_name():
    with pytest.raises(ImproperlyConfigured, match=r"Unknown Mollifier setting.*MOLLIFIER_SHARDZ"):
        load_settings({"MOLLIFIER_SHARDZ": "4"})


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        (" on ", True),
        ("false", False),
        ("False", False),
        ("0", False),
        ("no", False),
        ("off", False),
    ],
)
@pytest.mark.parametrize("flag", ["ENABLED", "DRAINER_ENABLED", "STALE_SWEEP_ENABLED", "SHADOW_MODE", "DRAIN_KICK"])
def test_flags_accept_the_usual_spellings(flag, text, value):
    assert getattr(load_settings({f"MOLLIFIER_{flag}": text}), flag) is value


def test_settings_object_is_immutable():
    cfg = load_settings({})

    with pytest.raises(ValueError, match="frozen"):
        cfg.SHARDS = 2


def test_manage_py_check_fails_at_start_up_naming_a_bad_variable():
    environ = {**os.environ, "MOLLIFIER_SHARDS": "0"}

    done = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=django_settings.BASE_DIR,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode != 0
    assert "MOLLIFIER_SHARDS" in done.stderr


# -------------------------------------------------------------------------------------------- checks


def _ids(messages) -> set[str]:
    return {m.id for m in messages}


def _mollifier_ids() -> set[str]:
    """Check ids from the settings checks."""
    return _ids(check_mollifier_settings())


def test_default_settings_pass_every_combination_check(mollifier_settings):
    mollifier_settings()

    assert _mollifier_ids() == set()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"LEASE_MS": 2000, "DRAIN_TIME_BUDGET_MS": 2000, "MUTATE_WAIT_MS": 100}, {"mollifier.E001"}),
        ({"LEASE_MS": 1000, "DRAIN_TIME_BUDGET_MS": 2000, "MUTATE_WAIT_MS": 100}, {"mollifier.E001"}),
        ({"LEASE_MS": 2001, "DRAIN_TIME_BUDGET_MS": 2000, "MUTATE_WAIT_MS": 100}, set()),
        ({"MUTATE_WAIT_MS": 30_000, "LEASE_MS": 30_000}, {"mollifier.E002"}),
        ({"MUTATE_WAIT_MS": 29_999, "LEASE_MS": 30_000}, set()),
        ({"LEASE_MS": 2000, "DRAIN_TIME_BUDGET_MS": 2000}, {"mollifier.E001", "mollifier.E002"}),
        ({"STALE_THRESHOLD_S": 1, "DRAIN_INTERVAL_S": 1.0}, {"mollifier.E003"}),
        ({"STALE_THRESHOLD_S": 5, "DRAIN_INTERVAL_S": 10.0}, {"mollifier.E003"}),
        ({"STALE_THRESHOLD_S": 1, "DRAIN_INTERVAL_S": 0.5}, set()),
        ({"SHADOW_MODE": True, "ENABLED": False}, {"mollifier.W001"}),
        ({"SHADOW_MODE": True, "ENABLED": True, "DRAINER_ENABLED": True}, set()),
        ({"ENABLED": True, "DRAINER_ENABLED": False}, {"mollifier.W002"}),
        ({"ENABLED": True, "DRAINER_ENABLED": True}, set()),
        ({"ENABLED": False, "DRAINER_ENABLED": True}, set()),
        ({"SHADOW_MODE": True, "ENABLED": True, "DRAINER_ENABLED": False}, {"mollifier.W002"}),
        ({"PACKET_ORIGIN": "https://packets.elsewhere.example"}, {"mollifier.E004"}),  # not in ALLOWED_HOSTS
        ({"PACKET_ORIGIN": "http://localhost:8001"}, set()),
        # A fence that can lapse within one Redis call: a keyed trigger that just restored it finds it gone (503).
        ({"REQUEST_KEY_FENCE_MS": 250, "REDIS_REQUEST_TIMEOUT_MS": 250}, {"mollifier.E005"}),
        ({"REQUEST_KEY_FENCE_MS": 1, "REDIS_REQUEST_TIMEOUT_MS": 250}, {"mollifier.E005"}),
        ({"REQUEST_KEY_FENCE_MS": 251, "REDIS_REQUEST_TIMEOUT_MS": 250}, set()),
        # A beat lease with fewer than two renewals in it: one slow call hands the ticks to another beat.
        ({"BEAT_LEASE_MS": 3999, "BEAT_RENEW_MS": 2000}, {"mollifier.E006"}),
        ({"BEAT_LEASE_MS": 4000, "BEAT_RENEW_MS": 2000}, set()),
        # A request key that expires while the SDK may still retry its call (160 s), or within the fence.
        ({"REQUEST_KEY_TTL_S": 160}, {"mollifier.E007"}),
        ({"REQUEST_KEY_TTL_S": 60}, {"mollifier.E007"}),
        ({"REQUEST_KEY_TTL_S": 161}, set()),
        ({"REQUEST_KEY_TTL_S": 300, "REQUEST_KEY_FENCE_MS": 300_000}, {"mollifier.E007"}),
        ({"REQUEST_KEY_TTL_S": 301, "REQUEST_KEY_FENCE_MS": 300_000}, set()),
    ],
)
def test_each_check_fires_exactly_on_its_combination(mollifier_settings, overrides, expected):
    mollifier_settings(**overrides)

    assert _mollifier_ids() == expected


def test_errors_name_both_variables(mollifier_settings):
    mollifier_settings(LEASE_MS=1000, DRAIN_TIME_BUDGET_MS=2000, MUTATE_WAIT_MS=100)

    [error] = [m for m in check_mollifier_settings() if m.id == "mollifier.E001"]

    assert "MOLLIFIER_LEASE_MS" in error.msg
    assert "MOLLIFIER_DRAIN_TIME_BUDGET_MS" in error.msg


def test_a_request_key_ttl_within_the_sdks_retry_window_is_refused_saying_why(mollifier_settings):
    mollifier_settings(REQUEST_KEY_TTL_S=60)

    [error] = [m for m in check_mollifier_settings() if m.id == "mollifier.E007"]

    assert "MOLLIFIER_REQUEST_KEY_TTL_S (60)" in error.msg
    assert "retry window (160 s)" in error.msg and "MOLLIFIER_REQUEST_KEY_FENCE_MS" in error.msg


# ------------------------------------------------------------------------------------- the secret key

DEV_KEY = "dev-insecure-mollifier-secret-key-change-me"  # the repository's fallback, before issue 16
LOAD_SETTINGS = "import django; django.setup(); from django.conf import settings; print('started', settings.DEBUG)"


def _without_key(**extra: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SECRET_KEY", "DJANGO_DEBUG")}
    return {**environ, "DJANGO_SETTINGS_MODULE": "mollifier_project.settings", **extra}


def _run(argv: list[str], environ: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=django_settings.BASE_DIR, env=environ, capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip


@pytest.mark.parametrize(
    "variables",
    [{}, {"DJANGO_SECRET_KEY": ""}, {"DJANGO_SECRET_KEY": DEV_KEY}, {"DJANGO_SECRET_KEY": "dev-insecure-x"},
     {"DJANGO_DEBUG": "0", "DJANGO_SECRET_KEY": DEV_KEY}],
)  # fmt: skip
def test_settings_refuse_a_missing_or_development_secret_key_when_debug_is_off(variables):
    done = _run([sys.executable, "-c", LOAD_SETTINGS], _without_key(**variables))

    assert done.returncode != 0, done.stdout
    assert "ImproperlyConfigured" in done.stderr
    assert "DJANGO_SECRET_KEY" in done.stderr and "DJANGO_DEBUG" in done.stderr
    assert "started" not in done.stdout


@pytest.mark.parametrize(
    ("variables", "debug"),
    [({"DJANGO_SECRET_KEY": "k" * 50}, "False"), ({"DJANGO_DEBUG": "1"}, "True"),
     ({"DJANGO_DEBUG": "1", "DJANGO_SECRET_KEY": DEV_KEY}, "True")],
)  # fmt: skip
def test_settings_start_with_a_key_of_their_own_or_in_debug(variables, debug):
    done = _run([sys.executable, "-c", LOAD_SETTINGS], _without_key(**variables))

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"started {debug}"


@pytest.mark.slow
def test_gunicorn_and_celery_refuse_to_start_without_a_secret_key():
    """They run no system checks, so the refusal is at settings import: every process refuses."""
    environ = _without_key()
    gunicorn = _run([sys.executable, "-m", "gunicorn", "mollifier_project.wsgi", "-c", "mollifier_project/gunicorn.conf.py",
                     "--bind", "127.0.0.1:0", "--workers", "1", "--no-control-socket"], environ)  # fmt: skip
    celery = _run([sys.executable, "-m", "celery", "-A", "mollifier_project", "worker", "--pool", "solo",
                   "--concurrency", "1", "-Q", "nothing-here"], environ)  # fmt: skip

    for done in (gunicorn, celery):
        assert done.returncode != 0
        assert "DJANGO_SECRET_KEY" in done.stderr, done.stderr[-2000:]


def test_the_test_processes_bring_a_key_of_their_own():
    """``make test`` exports the key ``scripts/services.py`` generated (``.data/services.env``), as an operator's
    deploy would: the tests run, and spawn every subprocess, with it."""
    assert os.environ.get("DJANGO_SECRET_KEY")
    assert django_settings.SECRET_KEY == os.environ["DJANGO_SECRET_KEY"]
    assert not django_settings.SECRET_KEY.startswith("dev-insecure-")


def test_redis_with_noeviction_policy_passes_the_eviction_check(redis_client):
    """The shared Redis must not be reconfigured, so W003 is checked against what it reports."""
    assert redis_client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}

    assert check_redis_eviction_policy() == []


def test_unreachable_redis_warns_instead_of_crashing_the_check(settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1

    assert _ids(check_redis_eviction_policy()) == {"mollifier.W004"}


# ------------------------------------------------------------------------------- the buffer's Redis URL


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/3", ("redis://127.0.0.1:6379/3", False)),
        ("unix:///run/redis.sock?db=2", ("unix:///run/redis.sock?db=2", False)),
        ("redis+cluster://10.0.0.5:7000", ("redis://10.0.0.5:7000", True)),
        ("rediss+cluster://u:p@10.0.0.5:7000/0", ("rediss://u:p@10.0.0.5:7000/0", True)),
    ],
)
def test_buffer_redis_url_carries_cluster_mode_in_its_scheme(url, expected):
    location = redis_location(url)

    assert (location.url, location.cluster) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("127.0.0.1:7000", "expected redis://"),
        ("http://127.0.0.1:7000", "expected redis://"),
        ("unix+cluster:///run/redis.sock", "expected redis://"),
        ("redis+cluster://127.0.0.1:7000/2", "only database 0"),
    ],
)
def test_an_unusable_buffer_redis_url_is_refused_naming_the_variable(url, message):
    with pytest.raises(ImproperlyConfigured, match=f"BUFFER_REDIS_URL=.*{message}"):
        redis_location(url)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis+sentinel://10.0.0.1:26379/buffer", SentinelLocation(hosts=(("10.0.0.1", 26379),), service="buffer")),
        (
            "rediss+sentinel://app:s%40cret@10.0.0.1:26379,10.0.0.2:26380,[fd00::3]/buffer/2"
            "?sentinel_username=sen&sentinel_password=sp",
            SentinelLocation(
                hosts=(("10.0.0.1", 26379), ("10.0.0.2", 26380), ("fd00::3", 26379)), service="buffer", db=2, tls=True,
                username="app", password="s@cret", sentinel_username="sen", sentinel_password="sp",
            ),
        ),
        ("redis+sentinel://:pw@sentinel-a/my%20primary", SentinelLocation(
            hosts=(("sentinel-a", 26379),), service="my primary", password="pw")),
    ],
)  # fmt: skip
def test_a_sentinel_url_names_its_sentinels_service_database_and_credentials(url, expected):
    location = redis_location(url)

    assert location.sentinel == expected and not location.cluster
    for field in ("username", "password", "sentinel_username", "sentinel_password"):
        assert getattr(expected, field) is None or getattr(expected, field) not in repr(location.sentinel)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://10.0.0.1:26379", "no service name"),
        ("redis+sentinel://10.0.0.1:26379/", "no service name"),
        ("redis+sentinel://10.0.0.1:port/buffer", "'10.0.0.1:port' is not host:port"),
        ("redis+sentinel://10.0.0.1:26379,/buffer", "'' is not host:port"),
        ("redis+sentinel://10.0.0.1:99999/buffer", "is not host:port"),
        ("redis+sentinel://10.0.0.1/buffer/two", "database 'two' is not a number"),
        ("redis+sentinel://10.0.0.1/buffer?password=x", "unknown parameter"),
        ("unix+sentinel:///run/sentinel.sock/buffer", r"unknown scheme 'unix\+sentinel'"),
    ],
)
def test_an_unusable_sentinel_url_is_refused_naming_the_problem(url, message):
    with pytest.raises(ImproperlyConfigured, match=f"BUFFER_REDIS_URL=.*{message}"):
        redis_location(url)


def test_a_refused_url_does_not_show_its_passwords():
    with pytest.raises(ImproperlyConfigured) as refused:
        redis_location("redis+sentinel://u:hunter2@10.0.0.1/?sentinel_password=swordfish")

    assert "hunter2" not in str(refused.value) and "swordfish" not in str(refused.value)
    assert "no service name" in str(refused.value)


def test_the_broker_url_may_not_be_a_redis_sentinel_url_and_its_sentinel_transport_needs_a_master_name():
    with pytest.raises(ImproperlyConfigured, match=r"REDIS_URL=.*CELERY_BROKER_URL=sentinel://"):
        check_broker_redis_url("redis+sentinel://127.0.0.1:26379/buffer")
    assert broker_transport_options("redis://127.0.0.1:6379/0", "") == {}
    with pytest.raises(ImproperlyConfigured, match="CELERY_BROKER_SENTINEL_MASTER"):
        broker_transport_options("sentinel://127.0.0.1:26379;sentinel://127.0.0.1:26380", "")
    assert broker_transport_options("sentinel://127.0.0.1:26379", "broker", "sp") == {
        "master_name": "broker", "sentinel_kwargs": {"password": "sp"}}  # fmt: skip


def test_the_broker_url_may_not_be_a_cluster():
    check_broker_redis_url("redis://127.0.0.1:6379/0")
    with pytest.raises(ImproperlyConfigured, match=r"REDIS_URL=.*Celery broker"):
        check_broker_redis_url("redis+cluster://127.0.0.1:7000")


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"BUFFER_REDIS_URL": "redis+cluster://127.0.0.1:1/5"}, "BUFFER_REDIS_URL="),
        ({"REDIS_URL": "redis+cluster://127.0.0.1:1"}, "REDIS_URL="),
        ({"BUFFER_REDIS_URL": "redis+sentinel://127.0.0.1:1"}, "no service name"),
        ({"CELERY_BROKER_URL": "sentinel://127.0.0.1:1"}, "CELERY_BROKER_SENTINEL_MASTER"),
    ],
)
def test_manage_py_check_refuses_a_bad_buffer_or_broker_url_at_start_up(variables, message):
    unset = ("BUFFER_REDIS_URL", "REDIS_URL", "CELERY_BROKER_URL", "CELERY_BROKER_SENTINEL_MASTER")
    env = {k: v for k, v in os.environ.items() if k not in unset} | variables
    done = subprocess.run(
        [sys.executable, "manage.py", "check"], capture_output=True, text=True, env=env, timeout=60,
        cwd=django_settings.BASE_DIR,
    )  # fmt: skip

    assert done.returncode != 0
    assert message in done.stderr and "ImproperlyConfigured" in done.stderr


def test_the_buffer_uses_its_own_url_and_falls_back_to_redis_url(settings):
    from buffer.client import buffer_redis_url

    settings.BUFFER_REDIS_URL, settings.REDIS_URL = "", "redis://127.0.0.1:6379/4"
    assert buffer_redis_url() == "redis://127.0.0.1:6379/4"
    settings.BUFFER_REDIS_URL = "redis+cluster://127.0.0.1:7000"
    assert buffer_redis_url() == "redis+cluster://127.0.0.1:7000"
