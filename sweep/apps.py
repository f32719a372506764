from django.apps import AppConfig


class SweepConfig(AppConfig):
    """The stale sweep: finds entries that sit in the buffer too long and raises an alertable gauge."""

    name = "sweep"
