"""Routes of the trigger.dev v4 wire format (docs/api.md#endpoints)."""

from django.urls import path

from api import http as api
from api.views import bulk as api_bulk
from api.views import packets as api_runs

urlpatterns = [
    path("api/v1/tasks/<path:task>/trigger", api.trigger_task, name="trigger-task"),
    path("api/v3/batches", api.create_batch, name="create-batch"),
    path("api/v3/batches/<str:batch_id>/items", api.batch_items, name="batch-items"),
    path("api/v2/batches/<str:batch_id>", api.retrieve_batch, name="retrieve-batch"),
    path("api/v3/runs/<str:run_id>", api.retrieve_run, name="retrieve-run"),
    path("api/v1/runs", api.list_runs, name="list-runs"),
    path("api/v2/runs/<str:run_id>/cancel", api.cancel_run, name="cancel-run"),
    path("api/v1/runs/<str:run_id>/tags", api.add_tags, name="add-tags"),
    path("api/v1/idempotencyKeys/<path:key>/reset", api.reset_idempotency_key, name="reset-idempotency-key"),
    path("api/openapi.json", api.openapi_document, name="openapi"),
]
urlpatterns += [  # bulk actions (api.views.bulk)
    path("api/v1/bulk-actions", api_bulk.bulk_actions, name="bulk-actions"),
    path("api/v1/bulk-actions/<str:action_id>", api_bulk.retrieve_bulk_action, name="retrieve-bulk-action"),
    path("api/v1/bulk-actions/<str:action_id>/abort", api_bulk.abort_bulk_action, name="abort-bulk-action"),
]

# Packets, reschedule, replay and metadata (api/views/packets.py, docs/api.md#packets).
urlpatterns += [
    path("api/v2/packets/<path:filename>", api_runs.create_upload_url, name="create-upload-url"),
    path("api/v1/packets/<path:filename>", api_runs.get_download_url, name="get-download-url"),
    path("api/v1/packet-objects/<str:token>", api_runs.packet_object, name="packet-object"),
    path("api/v1/runs/<str:run_id>/packets/<str:field>", api_runs.get_run_packet_url, name="run-packet-url"),
    path("api/v1/runs/<str:run_id>/reschedule", api_runs.reschedule_run, name="reschedule-run"),
    path("api/v1/runs/<str:run_id>/replay", api_runs.replay_run, name="replay-run"),
    path("api/v1/runs/<str:run_id>/metadata", api_runs.run_metadata, name="run-metadata"),
]
