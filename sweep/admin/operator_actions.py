"""The audit trail in the admin (docs/runbook.md#audit): ``OperatorAction`` rows, read-only, newest first,
searchable by user, action, scope, reason and run id, filterable by action, user, source and env id
(``?env_id=``, linked from the buffer env page). Rows are written only by ``sweep.audit.record``; nobody
adds, changes or deletes them here."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from runs.admin.model_admins import ReadOnlyAdmin
from sweep.models import OperatorAction


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
    list_display = ("at", "user", "source", "action", "scope", "run_count", "outcome", "reason")
    list_filter = ("action", "user", "source", EnvFilter)
    search_fields = ("user", "action", "scope", "reason", "run_ids")
    search_help_text = "User, action, org/env name, reason or a run id."
    date_hierarchy = "at"
    fields = (
        "at", "user", "source", "action", "scope", "org_ids", "env_ids", "run_count", "run_ids", "outcome", "counts",
        "reason",
    )  # fmt: skip
    readonly_fields = fields
