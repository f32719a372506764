"""A real gunicorn serving the project, for tests that must go over HTTP (the SDK, chunked bodies).

Django's ``runserver``/``live_server`` cannot be used: under them a chunked request body arrives empty
(docs/api.md#stream-batch-items). The server uses the test database (tests using it need ``transaction=True`` so their rows
are committed and visible to it) and the given ``MOLLIFIER_*`` overrides.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url_of_test_db() -> str:
    db = settings.DATABASES["default"]
    host = db.get("HOST") or ""
    port = db.get("PORT") or 5432
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    if host.startswith("/"):
        return f"postgresql://{user}{password}@/{db['NAME']}?host={host}"
    return f"postgresql://{user}{password}@{host or '127.0.0.1'}:{port}/{db['NAME']}"


class Gunicorn:
    """gunicorn as the Procfile runs it (``-c mollifier_project/gunicorn.conf.py``: its worker class and hooks).
    ``timeout`` is gunicorn's worker timeout; None leaves gunicorn's default (30 s), as the Procfile does. ``args``
    are added to the command line; ``stderr`` takes gunicorn's own output."""

    def __init__(
        self,
        env_overrides: dict[str, str],
        *,
        workers: int = 2,
        timeout: int | None = 60,
        args: Sequence[str] = (),
        stderr: IO[bytes] | None = None,
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOLLIFIER_")}
        env.update(DATABASE_URL=database_url_of_test_db(), REDIS_URL=settings.REDIS_URL, **env_overrides)
        timeout_args = ["--timeout", str(timeout)] if timeout is not None else []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "mollifier_project.wsgi", "-c", "mollifier_project/gunicorn.conf.py",
             "--bind", f"127.0.0.1:{self.port}", "--workers", str(workers), "--log-level", "warning",
             *timeout_args, "--no-control-socket", *args],
            cwd=ROOT, env=env, stderr=stderr,
        )  # fmt: skip
        self._wait()

    def _wait(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}")
            try:
                urllib.request.urlopen(f"{self.url}/api/v1/runs", timeout=1)
            except urllib.error.HTTPError:
                return  # 401: it answers
            except OSError:
                time.sleep(0.1)
                continue
            return
        raise RuntimeError("gunicorn did not answer in time")

    def worker_pids(self) -> set[int]:
        """The master's live worker processes (a worker killed on timeout and respawned changes this set)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        return {int(pid) for pid in children}

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
