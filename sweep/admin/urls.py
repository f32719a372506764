"""The buffer dashboard's routes, mounted at ``/admin/buffer/`` ahead of the admin site (``mollifier_project.urls``).
Every view goes through ``admin.site.admin_view``: staff only, anyone else is redirected to the admin login."""

from django.contrib import admin
from django.urls import path

from sweep.admin import views

app_name = "buffer_admin"

urlpatterns = [
    path("", admin.site.admin_view(views.buffer_dashboard), name="dashboard"),
    path("shard/<int:shard>/", admin.site.admin_view(views.shard_detail), name="shard"),
    path(
        "data-loss/<int:loss_id>/acknowledge/",
        admin.site.admin_view(views.acknowledge_data_loss),
        name="acknowledge_data_loss",
    ),
    path(
        "org/<int:org_id>/env/<int:env_id>/",
        admin.site.admin_view(views.env_detail),
        name="env",
    ),
    path(
        "org/<int:org_id>/env/<int:env_id>/<str:action>/",
        admin.site.admin_view(views.steer_switch),
        name="steer_env",
    ),
    path("org/<int:org_id>/<str:action>/", admin.site.admin_view(views.steer_switch), name="steer_org"),
]
