from django.apps import AppConfig


class DrainerConfig(AppConfig):
    """Drain shards: Celery tasks that lease buffered snapshots and materialise them in bulk."""

    name = "drainer"
