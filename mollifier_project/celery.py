"""The Celery app: Redis broker, configuration from Django settings (``CELERY_*``), tasks autodiscovered."""

from __future__ import annotations

import os
import threading
from typing import Any

from celery import Celery, Task
from celery.signals import setup_logging, task_postrun, task_prerun

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mollifier_project.settings")

app = Celery("mollifier_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

SEND_TIMEOUT_S = 1.0
"""How long a bounded send (``send_bounded``) waits on the broker's socket, to connect and for each reply. A
publish to a healthy Redis takes milliseconds; a second leaves a loaded box room."""


BOUNDED_TRANSPORT = {
    "socket_timeout": SEND_TIMEOUT_S, "socket_connect_timeout": SEND_TIMEOUT_S,
    "max_retries": 0, "connect_retries_timeout": SEND_TIMEOUT_S,  # kombu's connection retries: none
}  # fmt: skip
"""Broker transport options of a bounded send: every socket wait ``SEND_TIMEOUT_S``, no retry."""


def send_bounded(task: Task, args: tuple[Any, ...], **options: Any) -> None:
    """Send ``task`` (``apply_async``, so eager where Celery is set so) over a connection of its own whose socket
    waits at most ``SEND_TIMEOUT_S``, with no retry, and raise what the broker raised. The app's pooled
    connections wait with no socket timeout, so a hung broker (a SIGSTOPped Redis, a partition) held a web
    request's send until gunicorn killed the worker; this costs the request about a second
    (docs/operations.md#redis-timeouts-and-the-circuit-breaker). A connection per send: for rare sends only."""
    with app.connection_for_write(transport_options=BOUNDED_TRANSPORT) as connection:
        # celery-types' stub leaves out apply_async's **options, which Celery hands to send_task (connection=).
        task.apply_async(args, connection=connection, retry=False, **options)  # type: ignore[call-arg]


class SendSkipped(Exception):
    """Not sent: the sender is quiet after a failed send (``BoundedSender.quiet_s``)."""


class BoundedSender:
    """A broker connection of this process's own, kept between sends, whose socket waits at most
    ``SEND_TIMEOUT_S`` and which never retries: for sends a request makes often (the drain kick), where a
    connection per send (``send_bounded``) would cost each one 5–25 ms. Any error drops the connection (the next
    send opens a fresh one) and is raised; then, for ``quiet_s``, sends raise ``SendSkipped`` without trying, so a
    hung broker costs one request a second per window, not every request. A fork gets a connection of its own."""

    def __init__(self, celery_app: Celery | None = None, *, quiet_s: float = 5.0) -> None:
        self.app = celery_app or app
        self.quiet_s = quiet_s
        self._lock = threading.Lock()
        self._connection: Any = None
        self._pid = 0
        self._quiet_until = 0.0

    def send(self, name: str, args: tuple[Any, ...], *, now_s: float, **options: Any) -> None:
        """Send task ``name``; ``now_s`` is a monotonic clock reading (the quiet window's)."""
        with self._lock:
            if now_s < self._quiet_until:
                raise SendSkipped(f"a send failed less than {self.quiet_s:g} s ago")
            if self._connection is None or self._pid != os.getpid():
                self._connection = self.app.connection_for_write(transport_options=BOUNDED_TRANSPORT)
                self._pid = os.getpid()
            try:
                self.app.send_task(name, args=args, connection=self._connection, retry=False, **options)
            except BaseException:
                self._quiet_until = now_s + self.quiet_s
                self._drop()
                raise

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        try:
            connection.release()
        except Exception:
            pass


@setup_logging.connect
def _use_django_logging(**kwargs: object) -> None:
    """Celery installs its own plain-text root handler unless this signal has a receiver: apply
    ``settings.LOGGING`` instead, so worker and beat write the same JSON lines as the web (level: LOG_LEVEL)."""
    from logging.config import dictConfig

    from django.conf import settings

    dictConfig(settings.LOGGING)


@task_prerun.connect
@task_postrun.connect
def _keep_healthy_connections(task: object = None, **kwargs: object) -> None:
    """Around every task, what Django does around every request: drop a database connection that had an error,
    was left inside a transaction or is older than ``CONN_MAX_AGE``, and health-check a kept one before its next
    query. With ``CELERY_DB_REUSE_MAX`` set (settings) Celery's Django fix-up no longer closes the connection
    after each task, so a worker keeps its Postgres session between tasks (docs/operations.md#postgres): a
    drain task no longer opens one. Eager calls (tests) run inside the caller's transaction: left alone."""
    if getattr(getattr(task, "request", None), "is_eager", False):
        return
    from django.db import close_old_connections

    close_old_connections()
