"""The audit trail in the admin (docs/runbook.md#audit): ``OperatorAction`` rows, read-only, newest first,
searchable by user, action, scope, reason and run id, filterable by action, user, source and env id
(``?env_id=``, linked from the buffer env page). Rows are written only by ``sweep.audit.record``; nobody
adds, changes or deletes them here."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils.html import format_html

from runs.admin.model_admins import ReadOnlyAdmin
from sweep.models import OperatorAction

TEXT_CHARS = 80  # the list's scope and reason columns are cut to this; the whole text is in the title


class EnvFilter(admin.SimpleListFilter):
    """``?env_id=N``: the actions whose scope includes env N (the buffer env page links here)."""

    title = "environment id"
    parameter_name = "env_id"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        value = self.value()
        return [(value, value)] if value and value.isdigit() else []

    def queryset(self, request: HttpRequest, queryset: QuerySet[OperatorAction]) -> QuerySet[OperatorAction]:
        value = self.value()
        if value and value.isdigit():
            return queryset.filter(env_ids__contains=[int(value)])
        return queryset


@admin.register(OperatorAction)
class OperatorActionAdmin(ReadOnlyAdmin[OperatorAction]):
    # Fits a 1366 px window beside the filters (tests/browser/test_operator_screens.py measures it): no
    # navigation sidebar on the list (as on the run and StuckEntry lists), and the free-text columns cut and
    # allowed to break anywhere, so a long slug or a reason without spaces cannot widen the table.
    list_display = ("at", "user", "source", "action", "short_scope", "run_count", "outcome", "short_reason")
    list_filter = ("action", "user", "source", EnvFilter)
    search_fields = ("user", "action", "scope", "reason", "run_ids")
    search_help_text = "User, action, org/env name, reason or a run id."
    date_hierarchy = "at"
    fields = (
        "at", "user", "source", "action", "scope", "org_ids", "env_ids", "run_count", "run_ids", "outcome", "counts",
        "reason",
    )  # fmt: skip
    readonly_fields = fields

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        return super().changelist_view(request, {"is_nav_sidebar_enabled": False, **(extra_context or {})})

    @admin.display(description="scope", ordering="scope")
    def short_scope(self, obj: OperatorAction) -> str:
        return _cut(obj.scope)

    @admin.display(description="reason", ordering="reason")
    def short_reason(self, obj: OperatorAction) -> str:
        return _cut(obj.reason) if obj.reason else "—"


def _cut(text: str) -> str:
    """``text`` cut to ``TEXT_CHARS``, breakable anywhere, whole (escaped) in its title."""
    short = text if len(text) <= TEXT_CHARS else text[: TEXT_CHARS - 1] + "…"
    return format_html('<span title="{}" style="overflow-wrap: anywhere">{}</span>', text, short)
