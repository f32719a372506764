"""Routes of the trigger.dev v4 wire format (docs/api.md#endpoints), by resource (``api.views``). Every route
has an entry in the OpenAPI document (``api.openapi``); tests/fuzz/test_openapi.py holds the two in step."""

from django.urls import path

from api.views import batches, bulk, document, metadata, packets, runs, triggers

urlpatterns = [
    path("api/v1/tasks/<path:task>/trigger", triggers.trigger_task, name="trigger-task"),
    path("api/v3/batches", batches.create_batch, name="create-batch"),
    path("api/v3/batches/<str:batch_id>/items", batches.batch_items, name="batch-items"),
    path("api/v2/batches/<str:batch_id>", batches.retrieve_batch, name="retrieve-batch"),
    path("api/v3/runs/<str:run_id>", runs.retrieve_run, name="retrieve-run"),
    path("api/v1/runs", runs.list_runs, name="list-runs"),
    path("api/v2/runs/<str:run_id>/cancel", runs.cancel_run, name="cancel-run"),
    path("api/v1/runs/<str:run_id>/tags", runs.add_tags, name="add-tags"),
    path("api/v1/idempotencyKeys/<path:key>/reset", triggers.reset_idempotency_key, name="reset-idempotency-key"),
    path("api/openapi.json", document.openapi_document, name="openapi"),
    path("api/v1/bulk-actions", bulk.bulk_actions, name="bulk-actions"),
    path("api/v1/bulk-actions/<str:action_id>", bulk.retrieve_bulk_action, name="retrieve-bulk-action"),
    path("api/v1/bulk-actions/<str:action_id>/abort", bulk.abort_bulk_action, name="abort-bulk-action"),
    path("api/v2/packets/<path:filename>", packets.create_upload_url, name="create-upload-url"),
    path("api/v1/packets/<path:filename>", packets.get_download_url, name="get-download-url"),
    path("api/v1/packet-objects/<str:token>", packets.packet_object, name="packet-object"),
    path("api/v1/runs/<str:run_id>/packets/<str:field>", packets.get_run_packet_url, name="run-packet-url"),
    path("api/v1/runs/<str:run_id>/reschedule", runs.reschedule_run, name="reschedule-run"),
    path("api/v1/runs/<str:run_id>/replay", runs.replay_run, name="replay-run"),
    path("api/v1/runs/<str:run_id>/metadata", metadata.run_metadata, name="run-metadata"),
]
