"""The Celery app that worker subprocesses of ``test_processes.py`` run: the project's app, unchanged,
plus receivers that record what each task did and, on request, a deterministic crash point.

Nothing in product code knows about this module; every hook is a Celery or ``runs.signals`` receiver.
Environment (set by ``tests.drainer.processes``):

- ``DRAINTEST_NAME``: this process's name, carried in its events.
- ``DRAINTEST_EVENTS``: a Redis list (under the test's key prefix, so the test's cleanup removes it);
  one JSON object per worker start (``ready``), per finished task (``task``: name, shard, pid,
  start/end times, return value, ids of the rows it created, the beat epoch its message carried) and per
  message published (``sent``: task, time, beat epoch — a beat's ticks, counted per beat).
- ``DRAINTEST_BROKER_PREFIX``: kombu's ``global_keyprefix``: this test's broker keys never meet another
  test's (a stale drain tick from an earlier test would otherwise drain at the wrong moment).
- ``DRAINTEST_CRASH=after_commit``: SIGKILL this process on its first ``run_created``. The engine sends
  that signal after the drain's transaction committed and before the drain acks: the crash lands
  exactly between commit and ack.
- ``DRAINTEST_SESSION=1``: each task's event also carries the Postgres session it wrote through —
  ``session_at_start`` (backend pid and timeouts before the task's first statement, read when the task
  starts) and ``session`` (the same, read once inside the drain, at its first ``run_created``).
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import redis
from celery import signals as celery_signals
from django.db import connection

from drainer.beat import EPOCH_HEADER
from mollifier_project.celery import app
from runs.signals import run_created

# Added to the settings' options (a Sentinel broker's master_name, docs/operations.md#redis-sentinel), not instead.
app.conf.broker_transport_options = {
    **app.conf.broker_transport_options,
    "global_keyprefix": os.environ["DRAINTEST_BROKER_PREFIX"],
}

NAME = os.environ.get("DRAINTEST_NAME", "worker")
EVENTS = os.environ["DRAINTEST_EVENTS"]
CRASH = os.environ.get("DRAINTEST_CRASH", "")
SESSION = os.environ.get("DRAINTEST_SESSION", "") == "1"

_client: redis.Redis | None = None
_task: dict[str, Any] = {}


def _record(event: dict[str, Any]) -> None:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["REDIS_URL"])
    _client.rpush(EVENTS, json.dumps({"name": NAME, "pid": os.getpid(), **event}, default=repr))


@celery_signals.worker_ready.connect
def _ready(**kwargs: Any) -> None:
    _record({"event": "ready"})


@celery_signals.beat_init.connect
def _beat_ready(**kwargs: Any) -> None:
    _record({"event": "ready"})


@celery_signals.before_task_publish.connect
def _sent(sender: Any = None, headers: Any = None, **kwargs: Any) -> None:
    _record({"event": "sent", "task": sender, "at": time.time(), "epoch": (headers or {}).get(EPOCH_HEADER)})


@celery_signals.task_prerun.connect
def _started(task: Any = None, args: Any = None, **kwargs: Any) -> None:
    _task.clear()
    _task.update(
        task=task.name, shard=args[0] if args else None, started=time.time(), created=[],
        epoch=getattr(task.request, EPOCH_HEADER, None),
    )  # fmt: skip
    if SESSION:
        _task["session_at_start"] = _session()


def _session() -> dict[str, Any]:
    """This process's Postgres session: its backend pid and the drain's three timeouts as they stand."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT pg_backend_pid(), current_setting('statement_timeout'), current_setting('lock_timeout'),"
            " current_setting('idle_in_transaction_session_timeout')"
        )
        pid, statement, lock, idle = cur.fetchone()
    return {"pid": pid, "statement_timeout": statement, "lock_timeout": lock, "idle_timeout": idle}


@celery_signals.task_postrun.connect
def _finished(retval: Any = None, **kwargs: Any) -> None:
    _record({"event": "task", **_task, "ended": time.time(), "retval": retval})


def _created(sender: Any, run_id: str, **kwargs: Any) -> None:
    if CRASH == "after_commit":
        os.kill(os.getpid(), signal.SIGKILL)
    if SESSION and "session" not in _task:
        _task["session"] = _session()
    _task.setdefault("created", []).append(run_id)


run_created.connect(_created, weak=False, dispatch_uid="drain-process-tests")
