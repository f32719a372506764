"""Django set-up for benchmarks: a dedicated database, created and migrated on first use.

A benchmark truncates tables and writes hundreds of thousands of rows, so it must never run against the
database a developer (or another test run) is using. ``setup_django`` points ``DATABASE_URL`` at
``<name>_bench`` (or ``database=``) *before* Django reads its settings, creates that database if it is
missing and applies migrations.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/mollifier"


def bench_database_url(url: str, *, database: str | None = None, suffix: str = "_bench") -> str:
    """``url`` with its database replaced by ``database`` (default: the same name plus ``suffix``)."""
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if not name:
        raise SystemExit(f"DATABASE_URL names no database: {url}")
    target = database or (name if name.endswith(suffix) else name + suffix)
    return urlunsplit(parts._replace(path="/" + target))


def ensure_database(url: str) -> None:
    """Create the database ``url`` names unless it exists (connecting to the ``postgres`` maintenance db)."""
    import psycopg
    from psycopg import sql

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def setup_django(*, database: str | None = None) -> str:
    """Point Django at the benchmark database, create and migrate it, and return its URL."""
    url = bench_database_url(os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL), database=database)
    ensure_database(url)
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mollifier_project.settings")
    if str(PROJECT_ROOT) not in sys.path:
        sys.path.insert(0, str(PROJECT_ROOT))

    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)
    return url


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every worker-driven benchmark takes: worker size, broker, settings, database."""
    parser.add_argument("--concurrency", type=int, default=2, help="prefork worker processes")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/10", help="Celery broker of the worker")
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE",
        help="a MOLLIFIER_<NAME> setting for the worker and this process (repeatable), e.g. ROUND_BUDGET=2000",
    )  # fmt: skip
    parser.add_argument("--database", default=None, help="database name (default: DATABASE_URL's + _bench)")


def parse_settings(parser: argparse.ArgumentParser, items: Sequence[str]) -> dict[str, str]:
    """``--set NAME=VALUE`` items → {NAME: VALUE} (a leading ``MOLLIFIER_`` is accepted and dropped)."""
    settings_: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--set expects NAME=VALUE, got {item!r}")
        settings_[name.upper().removeprefix("MOLLIFIER_")] = value
    return settings_


@dataclass
class Measurement:
    """Repeated timings of one method over ``rows`` rows; the benches report medians."""

    method: str
    rows: int
    seconds: list[float] = field(default_factory=list)

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds)

    @property
    def rates(self) -> list[float]:
        return [self.rows / s for s in self.seconds]

    @property
    def rows_per_second(self) -> float:
        return statistics.median(self.rates)
