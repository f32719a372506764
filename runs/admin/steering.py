"""The buffer's switches on the org and env change pages (docs/operations.md#admin-screens): whether the org or
env is paused or its intake closed, and — for holders of ``sweep.repair_buffer`` — the buttons that pause, resume,
close or open it. The buttons post to the buffer pages' switch view (``buffer_admin:steer_org``/``steer_env``),
which asks first, records the switch in the audit trail and comes back here; this module only reads the state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from django.http import HttpRequest, HttpResponse

from buffer.buffer import Buffer, BufferUnavailable
from runs.models import Environment, Organization

_Tenant = TypeVar("_Tenant", bound=Organization | Environment)

if TYPE_CHECKING:  # the mixin is typed as the ModelAdmin of the org or env it is mixed into
    from django.contrib.admin import ModelAdmin as _Base
else:
    from typing import Generic as _Base


@dataclass(frozen=True, slots=True)
class BufferSwitches:
    """The switches of one org (``env_id`` None) or env, as its change page shows them."""

    org_id: int
    env_id: int | None
    org_paused: bool = False
    env_paused: bool = False
    closed: bool = False
    error: str = ""  # the buffer's Redis did not answer: the state is unknown, no button is offered


def switches_of(obj: Organization | Environment) -> BufferSwitches:
    """One round trip: the switches of the object's shard."""
    org_id, env_id = (obj.pk, None) if isinstance(obj, Organization) else (obj.org_id, obj.pk)
    buffer = Buffer.from_settings("operator")
    try:
        switches = buffer.switches(buffer.shard_for(org_id))
    except BufferUnavailable as exc:
        return BufferSwitches(org_id, env_id, error=f"The buffer's Redis is unreachable: {exc}")
    return BufferSwitches(
        org_id,
        env_id,
        org_paused=org_id in switches.paused_orgs,
        env_paused=env_id in switches.paused_envs,
        closed=env_id in switches.closed_envs,
    )


class BufferSwitchesMixin(_Base[_Tenant]):
    """Adds ``buffer_switches`` to the change page (template ``admin/runs/steer_change_form.html``)."""

    change_form_template = "admin/runs/steer_change_form.html"

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        obj = self.get_object(request, object_id)
        extra = dict(extra_context or {})
        if isinstance(obj, (Organization, Environment)):
            extra["buffer_switches"] = switches_of(obj)
        return super().change_view(request, object_id, form_url, extra)
