"""Operator admin for tenants and runs (docs/architecture.md#operator-admin): read-mostly, acting only through service functions.

Rows the system writes (TaskRun — only ``runs.engine`` writes them —, BatchTaskRun, RunAlert) are
view-only here. API keys are issued by ``manage.py mollifier_tenant`` and only revoked here; no page shows
a secret (only its hash is stored anyway).

The run, batch and alert lists must stay fast on millions of rows, so they never count the whole table
(``show_full_result_count = False`` and ``CappedCountPaginator``), never compute facet counts, and join
what they display up front (``list_select_related``).
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any, TypeVar, cast

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import quote
from django.core.paginator import Paginator
from django.db import models
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.http import urlencode

from runs.admin.buffered import BufferedRunAdminMixin
from runs.admin.deletion import BufferedEntriesDeletionMixin
from runs.admin.privacy import may_see_payloads, redacted
from runs.admin.steering import BufferSwitchesMixin
from runs.models import ApiKey, BatchTaskRun, Environment, Organization, RunAlert, TaskRun, flags_enrol_mollifier
from runs.tenants import revoke_keys

_M = TypeVar("_M", bound=models.Model)


class CappedCountPaginator(Paginator[models.Model]):
    """Counts at most ``cap + 1`` rows: ``COUNT(*)`` over millions of runs would cost seconds on every
    page load. ``capped`` tells the pagination template to say "more than <cap>" instead of a number."""

    cap = 10_000

    @cached_property
    def count(self) -> int:
        # Only ever given querysets (the admin's changelist); the stubs type object_list as any sequence.
        return cast(QuerySet[Any], self.object_list).order_by()[: self.cap + 1].count()

    @property
    def capped(self) -> bool:
        return self.count > self.cap


class ReadOnlyAdmin(admin.ModelAdmin[_M]):
    """View-only: the rows are written by the system, never by hand."""

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class LargeTableAdmin(ReadOnlyAdmin[_M]):
    paginator = CappedCountPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER


class EnvironmentListFilter(admin.RelatedFieldListFilter):
    """The env filter, with each env's org loaded in the same query (``str(env)`` shows the org slug)."""

    def field_choices(self, field, request, model_admin):
        return [(env.pk, str(env)) for env in Environment.objects.select_related("org")]


def _changelist_link(model: type[models.Model], label: str, **params: str | int) -> str:
    url = reverse(f"admin:runs_{model._meta.model_name}_changelist") + "?" + urlencode(params)
    return format_html('<a href="{}">{}</a>', url, label)


# ------------------------------------------------------------------------------------------- tenants


class OrganizationForm(forms.ModelForm[Organization]):
    """Enrolment is a checkbox, not a JSON box: it reads and writes ``feature_flags["mollifier"]`` as JSON
    ``true`` / ``false`` (strict enrolment, ``flags_enrol_mollifier``) and leaves every other flag alone."""

    mollifier_enrolled = forms.BooleanField(
        required=False,
        label="Enrolled in the mollifier",
        help_text='Sets feature_flags["mollifier"] to true or false. Web processes see the change within 30 s.',
    )

    class Meta:
        model = Organization
        fields = ("slug", "name")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["mollifier_enrolled"].initial = flags_enrol_mollifier(self.instance.feature_flags)

    def save(self, commit: bool = True) -> Organization:
        enrolled = self.cleaned_data["mollifier_enrolled"]
        if enrolled != flags_enrol_mollifier(self.instance.feature_flags):  # untouched: the flags stay as stored
            flags = self.instance.feature_flags
            self.instance.feature_flags = {**(flags if isinstance(flags, dict) else {}), "mollifier": enrolled}
        return super().save(commit)


@admin.register(Organization)
class OrganizationAdmin(
    BufferSwitchesMixin[Organization], BufferedEntriesDeletionMixin[Organization], admin.ModelAdmin[Organization]
):
    form = OrganizationForm
    list_display = ("slug", "name", "enrolled", "env_count", "created_at")
    search_fields = ("slug", "name")
    fields = ("slug", "name", "mollifier_enrolled", "feature_flags", "created_at")
    readonly_fields = ("feature_flags", "created_at")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Organization]:
        return super().get_queryset(request).annotate(env_count=Count("environments"))

    @admin.display(boolean=True, description="enrolled")
    def enrolled(self, obj: Organization) -> bool:
        return obj.mollifier_enrolled

    @admin.display(description="environments", ordering="env_count")
    def env_count(self, obj: Organization) -> int:
        return obj.env_count  # type: ignore[attr-defined]  # the annotation get_queryset adds


class ApiKeyInline(admin.TabularInline[ApiKey, Environment]):
    """The env's keys, for reading: issued by the command, revoked from the API key list."""

    model = ApiKey
    fields = ("prefix", "secret_hash", "created_at", "revoked_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Environment)
class EnvironmentAdmin(
    BufferSwitchesMixin[Environment], BufferedEntriesDeletionMixin[Environment], admin.ModelAdmin[Environment]
):
    list_display = ("org", "slug", "type", "created_at", "keys")
    list_filter = ("type", "org")
    list_select_related = ("org",)
    search_fields = ("slug", "org__slug")
    readonly_fields = ("created_at",)
    inlines = (ApiKeyInline,)
    # A scheme-less webhook URL means https (Django 6's default; saying so silences the deprecation).
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}

    @admin.display(description="API keys")
    def keys(self, obj: Environment) -> str:
        return _changelist_link(ApiKey, "keys", env__id__exact=obj.pk)


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin[ApiKey]):
    """Prefix and hash only. Keys come from ``manage.py mollifier_tenant``; here they can only be revoked."""

    list_display = ("prefix", "env", "created_at", "revoked_at", "active")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter), ("env", EnvironmentListFilter))
    list_select_related = ("env__org",)
    search_fields = ("=prefix",)
    fields = ("env", "prefix", "secret_hash", "created_at", "revoked_at")
    readonly_fields = fields
    actions = ("revoke_selected_keys",)

    @admin.display(boolean=True, description="active")
    def active(self, obj: ApiKey) -> bool:
        return obj.is_active

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        """Revoking is the one change allowed here; it needs the model's change permission."""
        return request.user.has_perm("runs.change_apikey")

    @admin.action(description="Revoke selected keys", permissions=("revoke",))
    def revoke_selected_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        selected = queryset.count()
        revoked = revoke_keys(queryset, timezone.now())
        message = f"Revoked {revoked} API key{'s' if revoked != 1 else ''}"
        if selected - revoked:
            already = selected - revoked
            message += f"; {already} {'was' if already == 1 else 'were'} already revoked"
        self.message_user(request, message + ".", messages.SUCCESS)


# ---------------------------------------------------------------------------------------------- runs


TENANT_FIELDS = ("payload", "metadata", "error")  # the run row's fields only payload readers see


@admin.register(TaskRun)
class TaskRunAdmin(BufferedRunAdminMixin, LargeTableAdmin[TaskRun]):
    # The list fits a 1366 px window beside its filters (tests/ops/test_admin_screens.py measures it): no org
    # column (the env column names it) and no materialised_at (the dwell says how long after created_at it
    # came); both are on the run's page. Run ids, times and envs do not wrap, so the admin's navigation
    # sidebar (275 px) is left off this one list (changelist_view); the breadcrumbs lead back.
    list_display = ("id", "task_identifier", "status", "env", "buffered", "created_at", "dwell")
    list_filter = ("status", "org", ("env", EnvironmentListFilter), "buffered")
    list_select_related = ("env__org",)
    # The search box matches exactly (see get_search_results); "=id" only makes Django show the box.
    search_fields = ("=id",)
    search_help_text = "An exact run id, tag or idempotency key."
    ordering = ("-id",)  # run ids sort by trigger time; the primary key index serves this order
    readonly_fields = ("dwell",)

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        return super().changelist_view(request, {"is_nav_sidebar_enabled": False, **(extra_context or {})})

    def get_queryset(self, request: HttpRequest) -> QuerySet[TaskRun]:
        """Payloads can be large and the list never shows them: load them only when a page reads them."""
        return super().get_queryset(request).defer("payload", "metadata", "error")

    def get_fields(self, request: HttpRequest, obj: TaskRun | None = None) -> Any:
        """The run's payload, metadata and error are the tenant's: without ``sweep.view_buffer_payloads`` the
        page shows their sizes instead (docs/operations.md#admin-permissions), and the form never holds them."""
        fields = list(super().get_fields(request, obj))
        if may_see_payloads(request):
            return fields
        return [f"{f}_redacted" if f in TENANT_FIELDS else f for f in fields]

    def get_readonly_fields(self, request: HttpRequest, obj: TaskRun | None = None) -> Any:
        hidden = () if may_see_payloads(request) else tuple(f"{f}_redacted" for f in TENANT_FIELDS)
        return (*super().get_readonly_fields(request, obj), *hidden)

    @admin.display(description="payload")
    def payload_redacted(self, obj: TaskRun) -> str:
        return redacted(obj.payload) or "—"

    @admin.display(description="metadata")
    def metadata_redacted(self, obj: TaskRun) -> str:
        return redacted(None if obj.metadata is None else json.dumps(obj.metadata, ensure_ascii=False)) or "—"

    @admin.display(description="error")
    def error_redacted(self, obj: TaskRun) -> str:
        return redacted(None if obj.error is None else json.dumps(obj.error, ensure_ascii=False)) or "—"

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[TaskRun], search_term: str
    ) -> tuple[QuerySet[TaskRun], bool]:
        """The whole term is one value matched exactly against the run id, each tag (array contains),
        and the idempotency key as stored or as the user gave it. Returns no duplicates."""
        term = search_term.strip()
        if not term:
            return queryset, False
        match = Q(id=term) | Q(tags__contains=[term]) | Q(idempotency_key=term) | Q(idempotency_key_user=term)
        return queryset.filter(match), False

    @admin.display(description="dwell")
    def dwell(self, obj: TaskRun) -> str:
        """Trigger to row: how long the run waited in the buffer (about zero for direct writes)."""
        delta: timedelta = obj.materialised_at - obj.created_at
        return f"{delta.total_seconds():.3f} s"


@admin.register(BatchTaskRun)
class BatchTaskRunAdmin(LargeTableAdmin[BatchTaskRun]):
    list_display = ("id", "env", "status", "run_count", "items_received", "sealed", "created_at")
    list_filter = ("status",)
    list_select_related = ("env__org",)
    search_fields = ("=id", "=idempotency_key")
    ordering = ("-id",)
    readonly_fields = ("runs",)

    @admin.display(description="runs")
    def runs(self, obj: BatchTaskRun) -> str:
        return _changelist_link(TaskRun, "runs of this batch", batch__id__exact=obj.pk)


@admin.register(RunAlert)
class RunAlertAdmin(LargeTableAdmin[RunAlert]):
    list_display = ("id", "run_link", "channel", "created_at", "detail")
    list_filter = ("channel",)
    search_fields = ("=run__id",)
    ordering = ("-id",)

    @admin.display(description="run")
    def run_link(self, obj: RunAlert) -> str:
        """The run id as a link, without joining (and loading the payload of) every run on the page."""
        url = reverse("admin:runs_taskrun_change", args=[quote(obj.run_id)])
        return format_html('<a href="{}">{}</a>', url, obj.run_id)
