"""URL routes: the trigger.dev-compatible API (``api.urls``), the operator admin and Prometheus metrics
(``telemetry.urls``). Included by dotted name, so configuration never imports the apps above it."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("", include("api.urls")),
    path("admin/buffer/", include("sweep.admin.urls")),  # the buffer dashboard, ahead of the admin site
    path("admin/", admin.site.urls),
    path("", include("telemetry.urls")),
]
