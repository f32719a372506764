"""Who may read tenant data on the operator screens (docs/operations.md#admin-permissions).

Payloads, metadata, outputs and error texts are the tenants' own: the buffered-run pages, the StuckEntry
admin and the buffer dashboard show them only to users with ``sweep.view_buffer_payloads``. Everyone else
sees their size and a redacted form, enough to tell "empty" from "4 kB of JSON". The buffer pages themselves
need ``sweep.view_buffer``. Both permissions are declared on ``sweep.StuckEntry`` (the operator tables' home);
they are named here, as strings, because the run admin (a layer below sweep) checks them too.
"""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpRequest

VIEW_BUFFER_PERMISSION = "sweep.view_buffer"
VIEW_PAYLOADS_PERMISSION = "sweep.view_buffer_payloads"

# The snapshot's keys (runs.snapshot) whose values are the tenant's own; the rest (ids, task, queue, times,
# limits, trace ids) is what the platform set or routes by, and stays readable.
TENANT_KEYS = frozenset({"payload", "metadata", "output", "error", "tags", "idem", "idem_user", "concurrency_key"})


def may_see_payloads(request: HttpRequest) -> bool:
    return request.user.has_perm(VIEW_PAYLOADS_PERMISSION)


def redacted(text: str | None) -> str:
    """The form shown instead of a tenant text: its size only ("" stays "")."""
    if not text:
        return ""
    return f"[redacted: {len(text.encode('utf-8')):,} bytes]"


def shown(request: HttpRequest, text: str | None) -> str:
    """The text itself for those who may read payloads, else its redacted form."""
    return (text or "") if may_see_payloads(request) else redacted(text)


def pretty_snapshot(snapshot: str, *, allowed: bool) -> str:
    """The snapshot as indented JSON; unless ``allowed`` (``may_see_payloads``), each tenant value (``TENANT_KEYS``)
    is replaced by its redacted form, and an unreadable snapshot by the redacted form of the whole."""
    try:
        doc: Any = json.loads(snapshot)
    except ValueError:
        return snapshot if allowed else redacted(snapshot)
    if not allowed:
        if not isinstance(doc, dict):
            return redacted(snapshot)
        doc = {
            k: redacted(v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)) if k in TENANT_KEYS else v
            for k, v in doc.items()
        }
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False)
