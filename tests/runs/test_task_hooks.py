"""The services queue no Celery task themselves: they send a hook after their commit, and ``runs.tasks`` connects
the receivers (docs/architecture.md#package-layers). Every process must have them, not only one that happened
to import ``runs.tasks``: a fresh interpreter that only sets Django up (as gunicorn, a worker or a management
command does) is asked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent

PROBE = """
import django
django.setup()
from runs.models import BulkAction, TaskRun
from runs.signals import bulk_action_created, run_failure_committed
print(run_failure_committed.has_listeners(TaskRun), bulk_action_created.has_listeners(BulkAction))
"""


def test_a_process_that_only_sets_django_up_has_the_receivers_that_queue_alerts_and_bulk_actions():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "mollifier_project.settings", "PYTHONPATH": str(ROOT)}

    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"], done.stdout + done.stderr
