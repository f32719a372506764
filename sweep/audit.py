"""The audit trail of operator actions (docs/runbook.md#audit): every repair, pause, resume, intake switch
and buffered-entries deletion, from the admin or the command line, is one ``OperatorAction`` row and one
structured log line naming the user. Callers (admin actions, views, the command) call ``record`` once per
action, after it ran, with what it did.

    record(user="alice", action="fail", source="admin", scope=Scope.of(rows), counts=done, reason="…")

``counts`` is a ``sweep.repair.Repaired`` (its outcome counts and ``describe`` sentence are kept) or a plain
``{name: int}`` mapping for actions without one (pause: ``{"changed": 1}``).
"""

from __future__ import annotations

import dataclasses
import getpass
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from django.utils import timezone

from runs.models import Environment, Organization
from sweep import repair
from sweep.models import OperatorAction

log = logging.getLogger(__name__)

RUN_IDS_KEPT = 100  # run ids an audit row names; run_count says how many there were


@dataclass(frozen=True, slots=True)
class Scope:
    """What an action touched: tenant ids, their names (looked up now), and the run ids."""

    org_ids: tuple[int, ...] = ()
    env_ids: tuple[int, ...] = ()
    run_ids: tuple[str, ...] = ()

    @classmethod
    def of(cls, targets: Iterable[repair.Target]) -> Scope:
        targets = list(targets)
        return cls(
            org_ids=tuple(sorted({t.org_id for t in targets})),
            env_ids=tuple(sorted({t.env_id for t in targets})),
            run_ids=tuple(t.run_id for t in targets),
        )

    def names(self) -> str:
        """ "acme/prod (12), acme/dev (13)"; an org named alone when no env is; deleted tenants as ids."""
        if self.env_ids:
            envs = {
                e.pk: f"{e.org.slug}/{e.slug}"
                for e in Environment.objects.filter(pk__in=self.env_ids).select_related("org")
            }
            return ", ".join(f"{envs.get(i, 'deleted env')} ({i})" for i in self.env_ids)
        orgs = {o.pk: o.slug for o in Organization.objects.filter(pk__in=self.org_ids).only("slug")}
        return ", ".join(f"{orgs.get(i, 'deleted org')} ({i})" for i in self.org_ids) or "every env"


def os_user() -> str:
    """Who runs the command line: the OS login name ("unknown" when there is none, e.g. a bare container)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


def record(
    *,
    user: str,
    action: str,
    source: str,
    scope: Scope,
    counts: repair.Repaired | Mapping[str, int],
    reason: str = "",
    names: str | None = None,
) -> OperatorAction:
    """One audit row and one log line (``sweep.audit`` logger, INFO) for an action that ran. ``names``
    overrides the scope's names looked up now (for tenants already deleted)."""
    if isinstance(counts, repair.Repaired):
        numbers = {
            f.name: getattr(counts, f.name)
            for f in dataclasses.fields(counts)
            if f.name not in ("verb", "dead_reasons")
        }
        outcome = repair.describe(counts)
    else:
        numbers = dict(counts)
        outcome = ", ".join(f"{v} {k}" for k, v in numbers.items())
    names = scope.names() if names is None else names
    row = OperatorAction.objects.create(
        at=timezone.now(), user=user[:150], source=source, action=action, org_ids=list(scope.org_ids),
        env_ids=list(scope.env_ids), scope=names, run_ids=list(scope.run_ids[:RUN_IDS_KEPT]),
        run_count=len(scope.run_ids), counts=numbers, outcome=outcome, reason=reason.strip(),
    )  # fmt: skip
    log.info(
        "operator action %s by %s (%s) on %s: %s",
        action, user, source, names, outcome,
        extra={"audit_id": row.pk, "user": user, "action": action, "source": source, "org_ids": list(scope.org_ids),
               "env_ids": list(scope.env_ids), "run_count": len(scope.run_ids), "counts": numbers,
               "reason": row.reason},
    )  # fmt: skip
    return row


def on_envs_deleted(
    sender: object,
    *,
    user: str,
    org_ids: Sequence[int],
    env_ids: Sequence[int],
    labels: Sequence[str],
    counts: Mapping[str, int],
    reason: str = "",
    **kwargs: object,
) -> None:
    """``runs.signals.envs_deleted_with_buffered_runs``: the envs are gone by now, so the scope keeps the
    labels the deletion knew; ``reason`` is what the operator typed on the confirmation page."""
    scope = Scope(org_ids=tuple(org_ids), env_ids=tuple(env_ids))
    record(
        user=user, action="delete envs", source="admin", scope=scope,
        counts=counts, reason=reason, names=", ".join(
            f"{label} ({env_id})" for label, env_id in zip(labels, env_ids, strict=True)),
    )  # fmt: skip
