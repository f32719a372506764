"""Processes on the hosts of scripts/hosts.py, each reaching Redis and Postgres through scripts/netproxy.py.

``make test-hosts`` runs these tests under ``scripts/hosts.py run``: ``HOSTS_TOPOLOGY`` describes the hosts,
and ``DATABASE_URL``/``REDIS_URL`` name the hosts' own servers, which the test process (root namespace,
on the bridge) reaches directly. Every process a test starts runs in a host's namespace and reaches each
server through a link of its own (``Links``): "drain1-redis", "drain1-postgres", … so one host can be slowed
or cut off from one server while the rest carry on.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.parse
from collections import Counter
from pathlib import Path

from django.conf import settings

from scripts.hosts import Description
from scripts.netproxy import NetProxy
from tests.drainer.processes import Cluster, Process
from tests.live import ROOT, Gunicorn, database_url_of_test_db


def description() -> Description:
    return Description.from_json(os.environ["HOSTS_TOPOLOGY"])


def _moved(url: str, host: str, port: int) -> str:
    parts = urllib.parse.urlsplit(url)
    auth = parts.netloc.rpartition("@")[0]
    return parts._replace(netloc=f"{auth}@{host}:{port}" if auth else f"{host}:{port}").geturl()


class Links:
    """One proxied link per (host, server), made on first use; ``set_rtt`` applies to all of them."""

    def __init__(self, hosts: Description, proxy: NetProxy, rtt_ms: float = 0.0) -> None:
        self.hosts = hosts
        self.proxy = proxy
        self.rtt_ms = rtt_ms

    def port(self, host: str, server: str) -> int:
        name = f"{host}-{server}"
        if name not in self.proxy.ports:
            upstream = self.hosts.redis if server == "redis" else self.hosts.postgres
            self.proxy.add(name, self.hosts.gateway, upstream)
            self.proxy.set(name, rtt_ms=self.rtt_ms)
        return self.proxy.ports[name]

    def set_rtt(self, rtt_ms: float) -> None:
        self.rtt_ms = rtt_ms
        for name in self.proxy.ports:
            self.proxy.set(name, rtt_ms=rtt_ms)

    def env(self, host: str, *, broker_url: str) -> dict[str, str]:
        """The URLs a process on ``host`` uses: the test database, the buffer's Redis and the broker, via its links."""
        redis_port, pg_port = self.port(host, "redis"), self.port(host, "postgres")
        gateway = self.hosts.gateway
        return {
            "DATABASE_URL": _moved(database_url_of_test_db(), gateway, pg_port),
            "REDIS_URL": _moved(settings.REDIS_URL, gateway, redis_port),
            "CELERY_BROKER_URL": _moved(broker_url, gateway, redis_port),
        }


class HostCluster(Cluster):
    """tests/drainer/processes.py's Cluster with each process on a host: a worker named after its host
    ("drain1", "drain2") runs there, beat on "beat"; the broker is the hosts' Redis (db 9)."""

    def __init__(self, links: Links, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.links = links

    def mollifier_env(self) -> dict[str, str]:
        """The MOLLIFIER_* settings of this cluster's processes (key prefix, shards, timings), for a web process."""
        return {k: v for k, v in self.env.items() if k.startswith("MOLLIFIER_")}

    def _start(self, name: str, args: list[str], extra_env: dict[str, str]) -> Process:
        host = name.split("-")[0]
        env = {**self.env, **self.links.env(host, broker_url=self.broker_url), "DRAINTEST_NAME": name, **extra_env}
        argv = self.links.hosts.argv(host, [sys.executable, "-m", "celery", "-A", "tests.drainer.worker_app", *args])
        process = Process(name, argv, env, self.log_dir / f"{name}.log")
        self.processes.append(process)
        return process


class HostGunicorn(Gunicorn):
    """gunicorn as tests/live.py starts it, but on the web host, bound to its address, reaching Redis and
    Postgres through the web host's links."""

    def __init__(self, links: Links, env_overrides: dict[str, str], *, workers: int = 3, log: Path) -> None:
        hosts = links.hosts
        self.port = 8000
        self.url = f"http://{hosts.hosts['web']}:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOLLIFIER_")}
        env.update(
            links.env("web", broker_url=settings.REDIS_URL), DJANGO_ALLOWED_HOSTS=hosts.hosts["web"], **env_overrides
        )
        self._log_path = log
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            hosts.argv("web", [
                sys.executable, "-m", "gunicorn", "mollifier_project.wsgi", "-c", "mollifier_project/gunicorn.conf.py",
                "--bind", f"{hosts.hosts['web']}:{self.port}", "--workers", str(workers), "--log-level", "warning",
                "--timeout", "60", "--no-control-socket", "--access-logfile", "-",
            ]),
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self._wait(60)

    def stop(self) -> None:
        super().stop()
        self._log.close()

    def answers(self) -> Counter[int]:
        """HTTP status → how many requests gunicorn's access log shows (retried 503s included)."""
        lines = self._log_path.read_text(errors="replace").splitlines()
        return Counter(int(m.group(1)) for line in lines if (m := re.search(r'" (\d{3}) ', line)))
