"""The buffer data losses in the admin, read-only: the history behind the dashboard's banner
(docs/architecture.md#buffer-epoch). Rows come from ``drainer.epochs``; operators acknowledge a loss on
``/admin/buffer/``, nothing is added, changed or deleted here."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from buffer.models import BufferDataLoss


@admin.register(BufferDataLoss)
class BufferDataLossAdmin(admin.ModelAdmin[BufferDataLoss]):
    list_display = ("detected_at", "prefix", "shards", "lost_after", "found", "acknowledged_at", "acknowledged_by")
    list_filter = (("acknowledged_at", admin.EmptyFieldListFilter), "prefix")
    readonly_fields = [f.name for f in BufferDataLoss._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
