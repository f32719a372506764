from django.apps import AppConfig


class DemoConfig(AppConfig):
    """The ``make demo`` tooling: start the processes, fire a trigger storm over HTTP, watch it drain."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "demo"
