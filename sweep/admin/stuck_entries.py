"""The StuckEntry admin (docs/architecture.md#operator-admin): what the stale sweep found, and the operators'
repairs of it.

Rows come from the system (``sweep.services``), so nobody adds, changes or deletes them here. The detail
page shows the entry as the buffer holds it now, snapshot included (``Buffer.get``). The actions — requeue
now, re-drive the selected dead letters, materialise now, fail as SYSTEM_FAILURE, cancel — act on exactly
the selected rows; re-driving every dead letter of their envs is a separate, explicit action. Each calls a
service function of ``sweep.repair`` and reports every outcome separately (``repair.describe``). Each asks
first: a confirmation page (count, scope by name, an optional reason), and only its ``confirm=yes`` POST acts;
then ``sweep.audit.record`` and a ``LogEntry`` per row record it (docs/runbook.md#confirmation, #audit). They
need the ``sweep.repair_buffer`` permission: staff without it see no actions, and a POST of one answers 403.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext as _

from buffer.buffer import Buffer, BufferUnavailable
from buffer.values import Entry
from drainer.limits import DrainLimits
from mollifier_project.clock import now_ms
from runs.admin.model_admins import CappedCountPaginator
from runs.admin.privacy import may_see_payloads, pretty_snapshot, redacted
from runs.models import Environment, Organization
from sweep import audit, repair
from sweep.dashboard import duration
from sweep.models import StuckEntry

REPAIR_PERMISSION = "sweep.repair_buffer"
ERROR_CHARS = 40  # the list's last-error column, cut to fit a 1366 px window
TENANT_CHOICES = 100  # org and env filters offer at most this many ids (the most recent rows')
CONFIRM_LISTED = 50  # the confirmation page lists this many of the selected runs, then "and N more"
REASON_MAX = 1000  # characters of the optional reason kept


def report(action: str, done: repair.Repaired) -> str:
    """ "Materialise now: 1 materialised, 2 dead-lettered: <reason>, 0 already handled." """
    return f"{action}: {repair.describe(done)}."


# ------------------------------------------------------------------------------------------------- filters


class _TenantFilter(admin.SimpleListFilter):
    """Filter by a plain id column (rows outlive their tenants): choices are the ids of the newest rows,
    labelled from Postgres where the tenant still exists."""

    field: str

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        ids = (
            StuckEntry.objects.order_by("-last_seen_at")
            .values_list(self.field, flat=True)
            .distinct()[: TENANT_CHOICES * 10]
        )
        unique = list(dict.fromkeys(ids))[:TENANT_CHOICES]
        labels = self.labels(unique)
        return [(str(i), labels.get(i, f"{i} (no row)")) for i in sorted(unique)]

    def labels(self, ids: Sequence[int]) -> dict[int, str]:
        raise NotImplementedError

    def queryset(self, request: HttpRequest, queryset: QuerySet[StuckEntry]) -> QuerySet[StuckEntry]:
        value = self.value()
        if value and value.isdigit():
            return queryset.filter(**{self.field: int(value)})
        return queryset


class OrgFilter(_TenantFilter):
    title = "org"
    parameter_name = "org_id"
    field = "org_id"

    def labels(self, ids: Sequence[int]) -> dict[int, str]:
        return {o.pk: f"{o.slug} ({o.pk})" for o in Organization.objects.filter(pk__in=ids).only("slug")}


class EnvFilter(_TenantFilter):
    title = "environment"
    parameter_name = "env_id"
    field = "env_id"

    def labels(self, ids: Sequence[int]) -> dict[int, str]:
        return {e.pk: f"{e} ({e.pk})" for e in Environment.objects.filter(pk__in=ids).select_related("org")}


AGE_BUCKETS: dict[str, tuple[str, timedelta | None, timedelta | None]] = {
    "lt5m": ("under 5 minutes", None, timedelta(minutes=5)),
    "5m-1h": ("5 minutes to 1 hour", timedelta(minutes=5), timedelta(hours=1)),
    "1h-1d": ("1 hour to 1 day", timedelta(hours=1), timedelta(days=1)),
    "gt1d": ("over 1 day", timedelta(days=1), None),
}


class AgeFilter(admin.SimpleListFilter):
    """How long ago the entry was accepted into the buffer."""

    title = "age"
    parameter_name = "age"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(key, label) for key, (label, _, _) in AGE_BUCKETS.items()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[StuckEntry]) -> QuerySet[StuckEntry]:
        bucket = AGE_BUCKETS.get(self.value() or "")
        if bucket is None:
            return queryset
        _, at_least, under = bucket
        now = timezone.now()
        if at_least is not None:
            queryset = queryset.filter(accepted_at__lte=now - at_least)
        if under is not None:
            queryset = queryset.filter(accepted_at__gt=now - under)
        return queryset


class StateFilter(admin.SimpleListFilter):
    """Open entries unless the operator asks otherwise: the list is a to-do list. The stock "All" link (no
    parameter) would mean the default again, so "all" is a choice of its own and the stock link is hidden."""

    title = "state"
    parameter_name = "state"
    DEFAULT = "open"

    def value(self) -> str:
        return super().value() or self.DEFAULT

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            ("open", "open (still in the buffer)"),
            ("resolved", "resolved (drained or repaired)"),
            ("all", "all"),
        ]

    def choices(self, changelist: Any) -> Any:
        for choice in super().choices(changelist):
            if choice["display"] != _("All"):  # the stock "All": no parameter, which is "open" here
                yield choice

    def queryset(self, request: HttpRequest, queryset: QuerySet[StuckEntry]) -> QuerySet[StuckEntry]:
        if self.value() == "open":
            return queryset.filter(resolved_at__isnull=True)
        if self.value() == "resolved":
            return queryset.filter(resolved_at__isnull=False)
        return queryset


def _selection_changed(request: HttpRequest, rows: Sequence[StuckEntry]) -> bool:
    """A confirmation answers the count it showed (``confirmed_count``): when the selection now holds another
    number of rows — "select all" over filters the sweep has added rows to since, rows pruned meanwhile — the
    repair must not act on rows nobody was asked about, so the page asks again."""
    confirmed = request.POST.get("confirmed_count")
    return confirmed is not None and confirmed != str(len(rows))


# --------------------------------------------------------------------------------------------------- admin

Repair = Callable[[Buffer, Sequence[StuckEntry], int], repair.Repaired]


@admin.register(StuckEntry)
class StuckEntryAdmin(admin.ModelAdmin[StuckEntry]):
    # Fits 1366 px beside the filters (tests/admin/test_stuck_list.py measures it): the env column names the
    # org too ("org/env (id)"), the error is cut (whole in its title), last seen is on the entry's page, and
    # the admin's navigation sidebar is left off this list (changelist_view), as on the run list.
    list_display = ("run_id", "kind", "age", "attempts", "short_error", "env", "shard", "open")
    list_filter = ("kind", OrgFilter, EnvFilter, AgeFilter, StateFilter)
    search_fields = ("=run_id",)
    search_help_text = "An exact run id."
    ordering = ("accepted_at", "run_id")
    paginator = CappedCountPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    change_list_template = "admin/sweep/stuckentry/change_list.html"
    fields = (
        "run_id", "kind", "org", "env", "shard", "accepted_at", "age", "first_seen_at", "last_seen_at", "attempts",
        "error_text", "resolved_at", "buffer_state", "links", "snapshot",
    )  # fmt: skip
    readonly_fields = fields
    actions = (
        "requeue_now", "redrive_dead_letters", "redrive_whole_envs", "materialise_now", "fail_entries", "cancel_runs",
    )  # fmt: skip

    # -- permissions: the rows are the system's; repairs need sweep.repair_buffer -------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_repair_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(REPAIR_PERMISSION)

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        """A POSTed repair without the permission is refused outright (the stock admin would only say "no
        action selected"); the rows on the page get their tenants' names in two queries."""
        if request.method == "POST" and request.POST.get("action") in self.actions:
            if not self.has_repair_permission(request):
                raise PermissionDenied
        response = super().changelist_view(request, {"is_nav_sidebar_enabled": False, **(extra_context or {})})
        if isinstance(response, TemplateResponse) and response.context_data and "cl" in response.context_data:
            rows = list(response.context_data["cl"].result_list)
            _label_tenants(rows)
            _mark_privacy(request, rows)
        return response

    def response_action(self, request: HttpRequest, queryset: QuerySet[StuckEntry]) -> HttpResponse | None:
        """Checked rows are acted on whatever the list's filters say now: a row resolved (by another operator's
        repair, or the sweep) since the page was drawn is still the row chosen, and its repair reports it
        as already handled. Only "select all N" acts on what the filters match."""
        if request.POST.get("select_across") in (None, "", "0"):
            queryset = self.get_queryset(request)
        return super().response_action(request, queryset)

    # -- list columns ------------------------------------------------------------------------------------

    @admin.display(description="age", ordering="accepted_at")
    def age(self, obj: StuckEntry) -> str:
        """Since acceptance: until now while open, until the sweep saw it drained once resolved."""
        delta = obj.age_at(obj.resolved_at or timezone.now())
        return duration(delta.total_seconds() * 1000)

    @admin.display(description="last error")
    def short_error(self, obj: StuckEntry) -> str:
        """Cut to fit the list; the whole text in the title (redacted, for users without the payload permission)."""
        text = _error(obj)
        short = text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 1] + "…"
        return format_html('<span title="{}">{}</span>', text, short)

    @admin.display(description="last error")
    def error_text(self, obj: StuckEntry) -> str:
        return _error(obj) or "—"

    @admin.display(description="org", ordering="org_id")
    def org(self, obj: StuckEntry) -> str:
        return getattr(obj, "_org_label", None) or str(obj.org_id)

    @admin.display(description="environment", ordering="env_id")
    def env(self, obj: StuckEntry) -> str:
        return getattr(obj, "_env_label", None) or str(obj.env_id)

    @admin.display(description="open", boolean=True)
    def open(self, obj: StuckEntry) -> bool:
        return obj.resolved_at is None

    # -- detail page: the entry as the buffer holds it now ---------------------------------------------------

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None) -> StuckEntry | None:
        # One instance per request, so the Redis read below happens once for every field that shows it.
        cache = request.__dict__.setdefault("_stuck_objects", {})
        if object_id not in cache:
            cache[object_id] = super().get_object(request, object_id, from_field)
            if cache[object_id] is not None:
                _label_tenants([cache[object_id]])
                _mark_privacy(request, [cache[object_id]])
        return cache[object_id]

    @admin.display(description="in the buffer now")
    def buffer_state(self, obj: StuckEntry) -> str:
        entry = _entry(obj)
        if isinstance(entry, str):
            return entry
        parts = [f"{entry.status}, attempts {entry.attempts}"]
        if entry.lease_until_ms is not None:
            parts.append(f"leased until {entry.lease_until_ms} ms")
        if entry.cancelled:
            parts.append(f"cancelled ({entry.cancel_reason or 'no reason'})")
        if entry.extra_tags:
            parts.append(f"extra tags {', '.join(entry.extra_tags)}")
        if entry.last_error:
            error = entry.last_error if getattr(obj, "_payloads_ok", False) else redacted(entry.last_error)
            parts.append(f"last error: {error}")
        return "; ".join(parts)

    @admin.display(description="snapshot")
    def snapshot(self, obj: StuckEntry) -> str:
        entry = _entry(obj)
        if isinstance(entry, str):
            return "—"
        pretty = pretty_snapshot(entry.snapshot, allowed=getattr(obj, "_payloads_ok", False))
        return format_html('<pre style="white-space: pre-wrap; max-height: 40em; overflow: auto">{}</pre>', pretty)

    @admin.display(description="see also")
    def links(self, obj: StuckEntry) -> str:
        env_page = reverse("buffer_admin:env", args=[obj.org_id, obj.env_id])
        try:
            run_page = reverse("admin:runs_taskrun_buffered", args=[obj.run_id])
        except NoReverseMatch:
            run_page = ""
        return format_html(
            '<a href="{}">the environment in the buffer dashboard</a>{}',
            env_page,
            format_html(' · <a href="{}">the buffered run</a>', run_page) if run_page else "",
        )

    # -- actions --------------------------------------------------------------------------------------------

    def _repair(
        self, request: HttpRequest, queryset: QuerySet[StuckEntry], action: str, fn: Repair, *, audit_as: str = ""
    ) -> TemplateResponse | None:
        """Ask first (docs/runbook.md#confirmation): without ``confirm`` in the POST this answers the
        confirmation page (count, scope, an optional reason) and changes nothing; confirmed, it repairs,
        reports, and records the action (``sweep.audit``, plus a ``LogEntry`` per row)."""
        rows = list(queryset.order_by("accepted_at", "run_id"))
        scope = audit.Scope.of(rows)
        if request.POST.get("confirm") != "yes" or _selection_changed(request, rows):
            return self._confirmation(request, rows, scope, action)
        try:
            done = fn(Buffer.from_settings("operator"), rows, now_ms())
        except BufferUnavailable as exc:
            self.message_user(request, f"The buffer's Redis is unreachable: {exc}", messages.ERROR)
            return None
        reason = request.POST.get("reason", "")[:REASON_MAX]
        audit.record(
            user=request.user.get_username(), action=audit_as or action, source="admin", scope=scope, counts=done,
            reason=reason,
        )  # fmt: skip
        message = f"{action}: {repair.describe(done)}" + (f" Reason: {reason.strip()}" if reason.strip() else "")
        for row in rows:
            self.log_change(request, row, message)
        level = messages.SUCCESS if done.changed and not done.troubled else messages.WARNING
        self.message_user(request, report(action, done), level)
        return None

    def _confirmation(
        self, request: HttpRequest, rows: Sequence[StuckEntry], scope: audit.Scope, action: str
    ) -> TemplateResponse:
        across = request.POST.get("select_across") == "1" and bool(rows)
        context = {
            **self.admin_site.each_context(request),
            "title": f"{action}: are you sure?",
            "opts": self.model._meta,
            "action_label": action,
            "action_name": request.POST.get("action", ""),
            "rows": rows[:CONFIRM_LISTED],
            "more": max(0, len(rows) - CONFIRM_LISTED),
            "count": len(rows),
            # Asked again: the count confirmed before, when the selection has changed since (``_selection_changed``).
            "confirmed_count": request.POST.get("confirmed_count") if request.POST.get("confirm") == "yes" else None,
            "scope": scope.names(),
            # "Select all" across pages: the confirmation carries select_across and one id (the admin needs one
            # to route the POST) and the list's filters in its URL, not one hidden field per row (a POST of more
            # than DATA_UPLOAD_MAX_NUMBER_FIELDS fields is refused).
            "select_across": "1" if across else "0",
            "selected": [str(r.pk) for r in rows[: 1 if across else None]],
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "reason_max": REASON_MAX,
        }
        return TemplateResponse(request, "admin/sweep/stuckentry/confirm_action.html", context)

    @admin.action(
        description="Requeue now (retrying, dead and expired entries to their queue heads)", permissions=("repair",)
    )
    def requeue_now(self, request: HttpRequest, queryset: QuerySet[StuckEntry]) -> TemplateResponse | None:
        return self._repair(
            request, queryset, "Requeue now", lambda b, rows, now: repair.requeue_now(b, rows, now_ms=now)
        )

    @admin.action(description="Re-drive the selected dead letters", permissions=("repair",))
    def redrive_dead_letters(self, request: HttpRequest, queryset: QuerySet[StuckEntry]) -> TemplateResponse | None:
        return self._repair(
            request, queryset, "Re-drive", lambda b, rows, now: repair.redrive_selected(b, rows, now_ms=now)
        )

    @admin.action(
        description="Re-drive every dead letter of the selected entries' environments (the whole env)",
        permissions=("repair",),
    )
    def redrive_whole_envs(self, request: HttpRequest, queryset: QuerySet[StuckEntry]) -> TemplateResponse | None:
        """The explicit whole-env repair: one message (and audit row) per env, naming it, since it touches
        unselected entries. One confirmation page for all of them."""
        rows = list(queryset.order_by("accepted_at", "run_id"))
        if request.POST.get("confirm") != "yes" or _selection_changed(request, rows):
            return self._confirmation(request, rows, audit.Scope.of(rows), "Re-drive every dead letter of these envs")
        for env_id in sorted(set(queryset.values_list("env_id", flat=True))):
            whole_env = functools.partial(_redrive_env, env_id=env_id)
            self._repair(
                request, queryset.filter(env_id=env_id), f"Re-drive every dead letter of env {env_id}", whole_env,
                audit_as="Re-drive every dead letter of the env",
            )  # fmt: skip
        return None

    @admin.action(description="Materialise now (write their rows)", permissions=("repair",))
    def materialise_now(self, request: HttpRequest, queryset: QuerySet[StuckEntry]) -> TemplateResponse | None:
        return self._repair(
            request, queryset, "Materialise now",
            lambda b, rows, now: repair.materialise_now(b, rows, now_ms=now, limits=_limits()),
        )  # fmt: skip

    @admin.action(description="Fail as SYSTEM_FAILURE", permissions=("repair",))
    def fail_entries(self, request: HttpRequest, queryset: QuerySet[StuckEntry]) -> TemplateResponse | None:
        return self._repair(
            request, queryset, "Fail", lambda b, rows, now: repair.fail(b, rows, now_ms=now, limits=_limits())
        )

    @admin.action(description="Cancel the runs", permissions=("repair",))
    def cancel_runs(self, request: HttpRequest, queryset: QuerySet[StuckEntry]) -> TemplateResponse | None:
        return self._repair(
            request, queryset, "Cancel", lambda b, rows, now: repair.cancel(b, rows, now_ms=now, limits=_limits())
        )


def _redrive_env(buffer: Buffer, rows: Sequence[StuckEntry], now: int, *, env_id: int) -> repair.Repaired:
    return repair.redrive(buffer, now_ms=now, env_id=env_id)


def _limits() -> DrainLimits:
    return DrainLimits.from_settings(settings.MOLLIFIER)


def _entry(obj: StuckEntry) -> Entry | str:
    """The buffer's entry for the row, read once per instance; a sentence when there is none to show."""
    if not hasattr(obj, "_buffer_entry"):
        try:
            entry: Entry | str | None = Buffer.from_settings("operator").get(obj.run_id, org_id=obj.org_id)
        except BufferUnavailable as exc:
            entry = f"unknown: the buffer's Redis is unreachable ({exc})"
        if entry is None:
            entry = "gone: the entry has left the buffer (drained, or acked and past its grace period)"
        obj._buffer_entry = entry  # type: ignore[attr-defined]
    return obj._buffer_entry  # type: ignore[attr-defined]


def _mark_privacy(request: HttpRequest, rows: Sequence[StuckEntry]) -> None:
    """Whether the rows' error texts and snapshots may be shown to this user (docs/operations.md#admin-permissions)."""
    allowed = may_see_payloads(request)
    for row in rows:
        row._payloads_ok = allowed  # type: ignore[attr-defined]


def _error(obj: StuckEntry) -> str:
    """The row's last error, or its redacted form (also when the row was not marked: fail closed)."""
    return obj.last_error if getattr(obj, "_payloads_ok", False) else redacted(obj.last_error)


def _label_tenants(rows: Sequence[StuckEntry]) -> None:
    """Attach org and env names to the rows (two queries for a page); ids whose tenant is gone stay ids."""
    orgs = {o.pk: o.slug for o in Organization.objects.filter(pk__in={r.org_id for r in rows}).only("slug")}
    envs = {
        e.pk: f"{e.org.slug}/{e.slug}"
        for e in Environment.objects.filter(pk__in={r.env_id for r in rows}).select_related("org")
    }
    for row in rows:
        row._org_label = f"{orgs[row.org_id]} ({row.org_id})" if row.org_id in orgs else f"{row.org_id} (deleted)"  # type: ignore[attr-defined]
        row._env_label = f"{envs[row.env_id]} ({row.env_id})" if row.env_id in envs else f"{row.env_id} (deleted)"  # type: ignore[attr-defined]
