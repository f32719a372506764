from django.apps import AppConfig


class DrainerConfig(AppConfig):
    """Drain shards: Celery tasks that lease buffered snapshots and materialise them in bulk."""

    name = "drainer"

    def ready(self) -> None:
        # Every Celery worker of this app gets the heartbeat step; it beats only on a worker of the drain queue.
        # Apps are ready before a worker builds its consumer (the Django fixup sets Django up at worker init).
        from drainer.heartbeat import DrainHeartbeat
        from mollifier_project.celery import app

        app.steps["consumer"].add(DrainHeartbeat)
