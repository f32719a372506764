"""WSGI entry point: ``gunicorn mollifier_project.wsgi`` (sync workers; see docs/architecture.md#processes-and-data-flow)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mollifier_project.settings")

application = get_wsgi_application()
