from django.apps import AppConfig


class RunsConfig(AppConfig):
    """Tenants, TaskRun, the run engine and the trigger service (the HTTP API is ``api``)."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "runs"

    def ready(self) -> None:
        from mollifier_project import checks  # noqa: F401  (registers the system checks)
        from runs import signals, tasks  # noqa: F401  (tasks connects the receivers that queue alerts and bulk actions)
