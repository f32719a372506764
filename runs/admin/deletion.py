"""Nothing lost from the admin (docs/architecture.md#operator-admin): deleting an org or env that still has
runs in the buffer.

Those runs can never become rows once their env is gone. ``BufferedEntriesDeletionMixin`` (on the
Organization and Environment admins) therefore

* warns on the confirmation page — the single delete page and the "delete selected" action alike — with
  the number of buffered entries that would be stranded (``Buffer.env_census``): each env's queue length
  (exact) plus its retrying and leased entries (counted among the first ``CENSUS_SCAN`` members of the
  shard's retry and leases sets: "at least" when those are larger); dead letters already waiting are
  mentioned separately;
* once the deletion has committed, dead-letters every queued, retrying and leased entry of the deleted envs
  (``Buffer.dead_letter_env``) with the reason "environment <org/env> deleted by <user>": they stay in the
  buffer for operators, appear on the dashboard as dead, and the sweep records them as stuck entries.

If Redis cannot be reached then, the entries stay queued and the drain dead-letters them itself when it
finds their env missing; the operator is told so.

When buffered runs would be stranded, both confirmation pages also ask for an optional reason (``reason``,
posted with the confirmation), which goes with the deletion into the audit trail.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from django.contrib import messages
from django.contrib.admin.actions import delete_selected
from django.db import models, transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from buffer.buffer import Buffer, BufferUnavailable
from mollifier_project.clock import now_ms
from runs.models import Environment, Organization
from runs.signals import envs_deleted_with_buffered_runs

log = logging.getLogger(__name__)

_Tenant = TypeVar("_Tenant", bound=Organization | Environment)

if TYPE_CHECKING:  # the mixin is typed as the ModelAdmin of the org or env it is mixed into
    from django.contrib.admin import ModelAdmin as _Base
else:
    from typing import Generic as _Base

SUMMARY_LABEL = "buffered runs (Redis), dead-lettered on delete"
REASON_MAX = 500  # as the other confirmation pages' reason field (maxlength)


@dataclass(frozen=True, slots=True)
class DoomedEnv:
    """An env about to be deleted, and what names it in the dead letters' reason."""

    org_id: int
    env_id: int
    label: str  # "acme/prod"


@dataclass(frozen=True, slots=True)
class Stranded:
    """What the deletion would strand in the buffer."""

    live: int  # queued + retrying + leased: dead-lettered when the deletion commits
    queued: int
    retrying: int
    leased: int
    dead: int  # already dead letters of these envs (they stay as they are)
    complete: bool  # False: retrying/leased/dead counted among the first members only (at least this many)

    def warning(self) -> str:
        at_least = "" if self.complete else "at least "
        parts = f"{self.queued} queued, {self.retrying} retrying, {self.leased} leased"
        text = (
            f"Warning: {at_least}{self.live} buffered run{'s' if self.live != 1 else ''} ({parts}) will be "
            "dead-lettered, not written: they stay in the buffer for operators."
        )
        if self.dead:
            text += f" {self.dead} dead letter{'s' if self.dead != 1 else ''} already wait."
        return text


def count_stranded(buffer: Buffer, envs: Sequence[DoomedEnv]) -> Stranded:
    """One ``env_census`` script call per org (its envs share a shard)."""
    by_org: dict[int, list[int]] = defaultdict(list)
    for env in envs:
        by_org[env.org_id].append(env.env_id)
    counts = [c for org_id, env_ids in by_org.items() for c in buffer.env_census(org_id=org_id, env_ids=env_ids)]
    return Stranded(
        live=sum(c.live for c in counts),
        queued=sum(c.queued for c in counts),
        retrying=sum(c.retrying for c in counts),
        leased=sum(c.leased for c in counts),
        dead=sum(c.dead for c in counts),
        complete=all(c.complete for c in counts),
    )


def dead_letter(buffer: Buffer, envs: Sequence[DoomedEnv], *, user: str, now_ms: int) -> int:
    """Dead-letter the live entries of deleted envs; returns how many."""
    return sum(
        buffer.dead_letter_env(
            org_id=env.org_id, env_id=env.env_id, now_ms=now_ms, reason=f"environment {env.label} deleted by {user}"
        )
        for env in envs
    )


def envs_of(objs: Iterable[models.Model]) -> list[DoomedEnv]:
    """The envs that deleting ``objs`` (organizations or environments) deletes."""
    objs = list(objs)
    env_ids = [o.pk for o in objs if isinstance(o, Environment)]
    org_ids = [o.pk for o in objs if isinstance(o, Organization)]
    found = Environment.objects.filter(models.Q(pk__in=env_ids) | models.Q(org_id__in=org_ids)).select_related("org")
    return [DoomedEnv(e.org_id, e.pk, f"{e.org.slug}/{e.slug}") for e in found.order_by("pk")]


class BufferedEntriesDeletionMixin(_Base[_Tenant]):
    """Warns about and dead-letters the buffered runs of deleted envs (module docstring)."""

    def get_deleted_objects(
        self, objs: Sequence[_Tenant] | QuerySet[_Tenant], request: HttpRequest
    ) -> tuple[list[str], dict[str, int], set[str], list[str]]:
        deleted, model_count, perms_needed, protected = super().get_deleted_objects(objs, request)
        envs = envs_of(objs)
        if not envs:
            return deleted, model_count, perms_needed, protected
        try:
            stranded = count_stranded(Buffer.from_settings("operator"), envs)
        except BufferUnavailable as exc:
            deleted = [f"Warning: the buffer's Redis is unreachable ({exc}), so its runs were not counted.", *deleted]
            return deleted, model_count, perms_needed, protected
        if stranded.live or stranded.dead:
            deleted = [stranded.warning(), *deleted]
            model_count = {**model_count, SUMMARY_LABEL: stranded.live}
        return deleted, model_count, perms_needed, protected

    def render_delete_form(self, request: HttpRequest, context: dict[str, Any]) -> HttpResponse:
        return _ask_reason(super().render_delete_form(request, context))

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        """Django's "delete selected", its confirmation page asking for a reason like the single delete page."""
        actions = super().get_actions(request)
        entry = actions.get("delete_selected")
        if entry is not None:
            _func, name, description = entry
            actions["delete_selected"] = (_delete_selected_asking_a_reason, name, description)
        return actions

    def delete_model(self, request: HttpRequest, obj: _Tenant) -> None:
        envs = envs_of([obj])
        super().delete_model(request, obj)
        self._dead_letter_on_commit(request, envs)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[_Tenant]) -> None:
        envs = envs_of(queryset)
        super().delete_queryset(request, queryset)
        self._dead_letter_on_commit(request, envs)

    def _dead_letter_on_commit(self, request: HttpRequest, envs: Sequence[DoomedEnv]) -> None:
        if not envs:
            return
        user = request.user.get_username() or "an operator"
        reason = request.POST.get("reason", "").strip()[:REASON_MAX]

        def announce(counts: dict[str, int]) -> None:
            envs_deleted_with_buffered_runs.send(
                sender=type(self), user=user, org_ids=sorted({e.org_id for e in envs}),
                env_ids=[e.env_id for e in envs], labels=[e.label for e in envs], counts=counts, reason=reason,
            )  # fmt: skip

        def bury() -> None:
            try:
                n = dead_letter(Buffer.from_settings("operator"), envs, user=user, now_ms=now_ms())
            except BufferUnavailable as exc:
                log.error(
                    "could not dead-letter the buffered runs of deleted envs %s: %s", [e.env_id for e in envs], exc
                )
                self.message_user(
                    request,
                    f"The buffer's Redis is unreachable ({exc}): buffered runs of the deleted environments stay "
                    "queued until the drain dead-letters them (their environment is missing).",
                    messages.ERROR,
                )
                announce({"dead_lettered": 0, "redis_unreachable": 1})
                return
            announce({"dead_lettered": n})
            if n:
                log.warning(
                    "dead-lettered %s buffered runs of deleted envs", n, extra={"env_ids": [e.env_id for e in envs]}
                )
                self.message_user(
                    request,
                    f"Dead-lettered {n} buffered run{'s' if n != 1 else ''} of the deleted environments; "
                    "they wait in the buffer as dead letters.",
                    messages.WARNING,
                )

        transaction.on_commit(bury)


def _ask_reason(response: Any) -> Any:
    """A confirmation page that warns of stranded buffered runs also asks why (``ask_reason`` in its context)."""
    if isinstance(response, TemplateResponse) and response.context_data is not None:
        counts = dict(response.context_data.get("model_count") or ())
        response.context_data["ask_reason"] = SUMMARY_LABEL in counts
    return response


def _delete_selected_asking_a_reason(modeladmin: Any, request: HttpRequest, queryset: Any) -> Any:
    return _ask_reason(delete_selected(modeladmin, request, queryset))
