"""The one route of the telemetry app."""

from django.urls import path

from telemetry.views import metrics_view

urlpatterns = [
    path("metrics", metrics_view, name="metrics"),
]
