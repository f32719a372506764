"""Buffered runs in the TaskRun admin (docs/architecture.md#operator-admin): a run that exists only in Redis.

Until the drain writes its row, a buffered run is no ``TaskRun``, so the stock admin could never find it.
``BufferedRunAdminMixin`` (on ``runs.admin.model_admins.TaskRunAdmin``) adds:

* to the search: a term that is a run id and matches no row is looked up in the buffer too
  (``Buffer.find_entry``: one read per shard, one round trip); other terms never reach Redis. A hit is shown above the (empty) results with
  its status and a link; ``admin/runs/taskrun/change_list.html`` renders it;
* a read-only page per buffered run at ``<changelist>/buffered/<run id>/``: status (as the buffer holds it
  and as the API reports it), attempts, lease, cancel flag, extra tags, last error, and the pretty-printed
  snapshot. It needs the TaskRun view permission, like the rest of the run admin.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.contrib.admin.utils import quote
from django.contrib.admin.views.main import SEARCH_VAR
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse

from buffer.buffer import Buffer, BufferUnavailable
from buffer.values import Entry, EntryStatus
from mollifier_project.clock import from_ms, now_ms
from runs import presenters
from runs.admin.privacy import may_see_payloads, pretty_snapshot, redacted
from runs.ids import timestamp_ms
from runs.models import Environment, Organization, TaskRun
from runs.snapshot import from_snapshot

if TYPE_CHECKING:  # the mixin is typed as the ModelAdmin it is mixed into
    from django.contrib.admin import ModelAdmin

    _Base = ModelAdmin[TaskRun]
else:
    _Base = object


def is_run_id(term: str) -> bool:
    """Shaped like one of our run ids (``run_`` + 25 base-32 characters)."""
    return term.startswith("run_") and timestamp_ms(term) is not None


def _ms(value: int | None) -> datetime | None:
    return None if value is None else from_ms(value)


class BufferedRunAdminMixin(_Base):
    """Finds and shows runs that so far exist only as buffer entries (module docstring)."""

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        """The stock list; when the search term is a run id with no row, the buffer is asked for it too.

        Done here rather than in ``get_search_results``, which ``TaskRunAdmin`` defines itself (a mixin's
        override of it would never run): the rows are searched as before, this only adds to the page."""
        response = super().changelist_view(request, extra_context)
        term = request.GET.get(SEARCH_VAR, "").strip()
        if not is_run_id(term) or not isinstance(response, TemplateResponse) or response.context_data is None:
            return response
        if TaskRun.objects.filter(id=term).exists():
            return response
        try:
            match = Buffer.from_settings("operator").find_entry(term)
        except BufferUnavailable as exc:
            response.context_data["buffered_error"] = f"The buffer's Redis is unreachable: {exc}"
            return response
        if match is None:
            response.context_data["buffered_none"] = True
        else:
            response.context_data["buffered_match"] = match
            response.context_data["buffered_url"] = reverse("admin:runs_taskrun_buffered", args=[match.run_id])
        return response

    def get_urls(self) -> list[URLPattern]:
        own = [
            path(
                "buffered/<str:run_id>/",
                self.admin_site.admin_view(self.buffered_run_view),
                name="runs_taskrun_buffered",
            )
        ]
        return own + super().get_urls()

    def buffered_run_view(self, request: HttpRequest, run_id: str) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            entry = Buffer.from_settings("operator").find_entry(run_id)
        except BufferUnavailable as exc:
            return TemplateResponse(
                request, "admin/runs/taskrun/buffered_run.html",
                {**self._context(request, run_id), "error": f"The buffer's Redis is unreachable: {exc}"}, status=503,
            )  # fmt: skip
        row = TaskRun.objects.filter(id=run_id).only("id").first()
        if entry is None and row is None:
            raise Http404(f"{run_id} is neither in the buffer nor a row")
        context = self._context(request, run_id)
        if row is not None:
            context["row_url"] = reverse("admin:runs_taskrun_change", args=[quote(row.pk)])
        if entry is not None:
            context.update(
                _describe(
                    entry, shard=Buffer.from_settings("operator").shard_for(entry.org_id),
                    payloads=may_see_payloads(request),
                )
            )  # fmt: skip
        return TemplateResponse(request, "admin/runs/taskrun/buffered_run.html", context)

    def _context(self, request: HttpRequest, run_id: str) -> dict[str, Any]:
        return {
            **self.admin_site.each_context(request),
            "title": f"Buffered run {run_id}",
            "run_id": run_id,
            "opts": TaskRun._meta,
            "changelist_url": reverse("admin:runs_taskrun_changelist"),
        }


def _describe(entry: Entry, *, shard: int, payloads: bool) -> dict[str, Any]:
    """What the page shows of an entry; an unreadable snapshot is shown as stored. Without ``payloads`` (the
    ``sweep.view_buffer_payloads`` permission) the tenant's values and the error text are redacted to sizes."""
    pretty = pretty_snapshot(entry.snapshot, allowed=payloads)
    api_status = None
    task = None
    try:
        snapshot = from_snapshot(entry.snapshot)
    except Exception:  # any failure to read it means "unreadable", as for the drain
        snapshot = None
    if snapshot is not None:
        task = snapshot.task_identifier
        doc = presenters.buffered_run(
            snapshot, extra_tags=entry.extra_tags, cancelled_at=_ms(entry.cancelled_at_ms),
            cancel_reason=entry.cancel_reason, now=from_ms(now_ms()),
            dead_reason=(entry.last_error or "dead-lettered") if entry.status is EntryStatus.DEAD else None,
        )  # fmt: skip
        api_status = doc.get("status")
    env = Environment.objects.select_related("org").filter(pk=entry.env_id).first()
    org = env.org if env is not None else Organization.objects.filter(pk=entry.org_id).first()
    return {
        "entry": entry,
        "shard": shard,
        "task": task,
        "api_status": api_status,
        "accepted_at": from_ms(entry.accepted_ms),
        "lease_until": _ms(entry.lease_until_ms),
        "cancelled_at": _ms(entry.cancelled_at_ms),
        "snapshot_pretty": pretty,
        "last_error": (entry.last_error if payloads else redacted(entry.last_error)) or "none",
        "unreadable": snapshot is None,
        "env": env,
        "org": org,
        "env_url": reverse("buffer_admin:env", args=[entry.org_id, entry.env_id]),
    }
