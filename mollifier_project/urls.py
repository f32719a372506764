"""URL routes: the trigger.dev-compatible API (``runs.urls``) and the operator admin."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("", include("runs.urls")),
    path("admin/", admin.site.urls),
]
