"""gunicorn settings for the Procfile's ``web`` process (``gunicorn -c mollifier_project/gunicorn.conf.py``).

The worker class and the prometheus-client multiprocess hook live here; workers, bind and logging stay on the
Procfile line. README "Metrics" explains the multiprocess mode; docs/operations.md#slow-clients the worker.
"""

from __future__ import annotations

import os
from typing import Any

logger_class = "mollifier_project.gunicorn_logging.MaskingLogger"  # masks packet tokens (docs/operations.md#logs)
# gunicorn's sync worker, made safe against slow clients: heads are collected without holding the worker, and
# slow bodies are cut with a 408 (MOLLIFIER_WEB_* settings).
worker_class = "mollifier_project.gunicorn_worker.DeadlineWorker"


def child_exit(server: Any, worker: Any) -> None:
    """A worker exited: remove its live-gauge files so a dead process is not reported. Its counter and
    histogram files stay — a counter's sum must not drop when a worker is recycled."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, path)
