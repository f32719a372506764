"""URL routes: the trigger.dev-compatible API (``runs.urls``), the operator admin and Prometheus metrics."""

from django.contrib import admin
from django.urls import include, path

from buffer.views import metrics_view

urlpatterns = [
    path("", include("runs.urls")),
    path("admin/", admin.site.urls),
    path("metrics", metrics_view, name="metrics"),
]
