"""The admin site, made to lead to the buffer dashboard (docs/operations.md#admin-screens): a "Buffer
dashboard" entry on the admin index and in its sidebar (``get_app_list``), and "View site" pointing at the
dashboard (``site_url``; the service has no public site of its own).

Installed as ``mollifier_project.admin_site.MollifierAdminConfig`` in place of ``django.contrib.admin``
(Django's documented way to replace the default site). The dashboard's views live in ``sweep.admin``; this
module names them by URL only, so the bottom layer imports nothing above it.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.apps import AdminConfig
from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse

DASHBOARD_URL_NAME = "buffer_admin:dashboard"
# The dashboard's pages answer 403 without it (sweep.admin.urls), so only its holders are shown the entry.
DASHBOARD_PERMISSION = "sweep.view_buffer"


class MollifierAdminSite(admin.AdminSite):
    site_url = "/admin/buffer/"

    def each_context(self, request: HttpRequest) -> dict[str, Any]:
        context = super().each_context(request)
        if not request.user.has_perm(DASHBOARD_PERMISSION):
            context["site_url"] = None  # no "View site" link to a page that would answer 403
        return context

    def get_app_list(self, request: HttpRequest, app_label: str | None = None) -> list[dict[str, Any]]:
        apps = super().get_app_list(request, app_label)
        user = request.user
        if app_label is not None or not (user.is_active and user.is_staff and user.has_perm(DASHBOARD_PERMISSION)):
            return apps
        try:
            url = reverse(DASHBOARD_URL_NAME)
        except NoReverseMatch:  # a URLconf without the dashboard (tests of other faces)
            return apps
        entry = {
            "name": "Buffer dashboard", "app_label": "buffer_dashboard", "app_url": url, "has_module_perms": True,
            "models": [{
                "name": "Dashboard: health, shards, paused and closed envs", "object_name": "BufferDashboard",
                "perms": {"view": True}, "admin_url": url, "add_url": None, "view_only": True,
            }],
        }  # fmt: skip
        return [entry, *apps]


class MollifierAdminConfig(AdminConfig):
    default_site = "mollifier_project.admin_site.MollifierAdminSite"
