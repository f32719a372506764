"""Running the official SDK (``sdk.mjs``) against a gunicorn serving Mollifier, for the SDK test modules."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis as redis_lib
from django.conf import settings

from tests.live import Gunicorn

HARNESS = Path(__file__).resolve().parent


def _env(server: Gunicorn, secret: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRIGGER_", "VERCEL_"))}
    env.update(MOLLIFIER_URL=server.url, MOLLIFIER_KEY=secret)
    return env


def command(op: str, **args: Any) -> list[str]:
    return [shutil.which("node") or "node", "sdk.mjs", op, json.dumps(args)]


def sdk(server: Gunicorn, secret: str, op: str, **args: Any) -> dict[str, Any]:
    """One SDK call; ``{"ok": True, "result": …}`` or ``{"ok": False, "error": {name, status, message}}``."""
    done = subprocess.run(
        command(op, **args), cwd=HARNESS, env=_env(server, secret), capture_output=True, text=True, timeout=180,
        check=True,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def sdk_together(server: Gunicorn, secret: str, calls: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Several SDK calls in separate Node processes at the same time (real concurrency); their outcomes in order."""
    procs = [
        subprocess.Popen(command(op, **args), cwd=HARNESS, env=_env(server, secret), stdout=subprocess.PIPE, text=True)
        for op, args in calls
    ]
    outs = []
    for proc in procs:
        stdout, _ = proc.communicate(timeout=180)
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    return outs


@contextmanager
def buffering_server(packets_root: Path, **overrides: str) -> Iterator[Gunicorn]:
    """gunicorn with the gate on and a zero trip threshold: every trigger of an enrolled org is buffered, while
    a non-enrolled org passes straight through. Packets go under ``packets_root``; Redis keys are removed after."""
    assert (HARNESS / "node_modules").exists(), "the SDK is not installed: run `npm ci` in tests/sdk (make test does)"
    prefix = f"msdk-{uuid.uuid4().hex[:10]}"
    live = Gunicorn(
        {
            "MOLLIFIER_ENABLED": "true",
            "MOLLIFIER_TRIP_THRESHOLD": "0",
            "MOLLIFIER_KEY_PREFIX": prefix,
            "MOLLIFIER_MUTATE_WAIT_MS": "300",
            "PACKETS_ROOT": str(packets_root),
            **overrides,
        }
    )
    try:
        yield live
    finally:
        live.stop()
        client = redis_lib.Redis.from_url(settings.REDIS_URL)
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
