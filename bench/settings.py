"""Settings of the gunicorn that ``bench/trigger.py`` starts: the project's, plus the bench-only URLs.

The no-op view is a yardstick for the trigger path and must never be reachable in the product, so it
lives in ``bench/urls.py`` and only this settings module routes to it.
"""

from __future__ import annotations

from mollifier_project.settings import *  # noqa: F403

ROOT_URLCONF = "bench.urls"
