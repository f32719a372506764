"""The buffer dashboard's routes, mounted at ``/admin/buffer/`` ahead of the admin site (``mollifier_project.urls``).
Every view goes through ``admin.site.admin_view`` (staff only, anyone else is redirected to the admin login) and
needs ``sweep.view_buffer`` besides: staff without it get 403 (docs/operations.md#admin-permissions). The
switches too, though they also need ``sweep.repair_buffer``: their confirmation page names the tenant and counts
its entries."""

from collections.abc import Callable

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.urls import path

from runs.admin.privacy import VIEW_BUFFER_PERMISSION
from sweep.admin import views

app_name = "buffer_admin"


def buffer_view(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Staff with ``sweep.view_buffer`` only: the pages name tenants, their queue heads and their errors."""

    def guarded(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        if not request.user.has_perm(VIEW_BUFFER_PERMISSION):
            raise PermissionDenied("the buffer pages need the sweep.view_buffer permission")
        return view(request, *args, **kwargs)

    return admin.site.admin_view(guarded)


urlpatterns = [
    path("", buffer_view(views.buffer_dashboard), name="dashboard"),
    path("shard/<int:shard>/", buffer_view(views.shard_detail), name="shard"),
    path(
        "data-loss/<int:loss_id>/acknowledge/",
        buffer_view(views.acknowledge_data_loss),
        name="acknowledge_data_loss",
    ),
    path(
        "org/<int:org_id>/env/<int:env_id>/",
        buffer_view(views.env_detail),
        name="env",
    ),
    path(
        "org/<int:org_id>/env/<int:env_id>/<str:action>/",
        buffer_view(views.steer_switch),
        name="steer_env",
    ),
    path("org/<int:org_id>/<str:action>/", buffer_view(views.steer_switch), name="steer_org"),
]
