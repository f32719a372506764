from django.apps import AppConfig


class TelemetryConfig(AppConfig):
    """``/metrics``: every process's counters and the buffer's scrape-time gauges in one exposition."""

    name = "telemetry"
