"""URL routes: the operator admin. The trigger.dev-compatible API is added by ``runs.urls``."""

from django.contrib import admin
from django.urls import path

urlpatterns = [
    path("admin/", admin.site.urls),
]
