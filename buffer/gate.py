"""The gate: at trigger time, write the row now (pass through) or park the snapshot (mollify) (docs/architecture.md#gate).

Order of the checks, each cheaper than the next and each stopping evaluation:

1. master switch ``ENABLED`` off → pass through, nothing counted (the feature is inert);
2. bypass (a child whose parent waits on it, a debounced trigger, a one-time-use token — the caller
   decides) → pass through, not counted toward the rate, because buffering it would stall its parent
   or break its semantics;
3. org not enrolled and ``SHADOW_MODE`` off → pass through, not evaluated;
4. otherwise one ``trip`` call counts the trigger and reads the env's tripped marker. Enrolled orgs are
   mollified while tripped; non-enrolled orgs (shadow mode) only log "would mollify".

Every evaluation increments ``mollifier_decisions_total{outcome, reason}``. Redis errors propagate: the
trigger service fails open and counts that itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from buffer import metrics

if TYPE_CHECKING:
    from buffer.buffer import Buffer
    from mollifier_project.config import MollifierSettings

logger = logging.getLogger(__name__)


class Action(StrEnum):
    PASS_THROUGH = "pass_through"
    MOLLIFY = "mollify"


class Reason(StrEnum):
    DISABLED = "disabled"
    BYPASS = "bypass"
    NOT_ENROLLED = "not_enrolled"
    SHADOW = "shadow"  # not enrolled, shadow mode, tripped: would have been mollified
    BELOW_THRESHOLD = "below_threshold"
    TRIPPED = "tripped"


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: Reason
    count: int | None = None  # triggers of the env in the current window, when the trip was evaluated

    @property
    def mollify(self) -> bool:
        return self.action is Action.MOLLIFY


def evaluate(
    buffer: Buffer,
    *,
    org_id: int,
    env_id: int,
    enrolled: bool,
    bypass: bool,
    now_ms: int,
    cfg: MollifierSettings,
) -> Decision:
    """Decide for one trigger (steps in the module docstring)."""
    decision = _decide(buffer, org_id=org_id, env_id=env_id, enrolled=enrolled, bypass=bypass, now_ms=now_ms, cfg=cfg)
    metrics.DECISIONS.labels(outcome=decision.action.value, reason=decision.reason.value).inc()
    if decision.count is not None and decision.count == cfg.TRIP_THRESHOLD + 1:
        # The trigger that pushed this window over the threshold: one line per window, with the tenant ids
        # the metric labels must not carry (docs/architecture.md#telemetry).
        logger.info(
            "env %s tripped: %s triggers in the window", env_id, decision.count,
            extra={"env_id": env_id, "org_id": org_id, "count": decision.count, "outcome": decision.action.value,
                   "reason": decision.reason.value},
        )  # fmt: skip
    return decision


def count_fail_open() -> None:
    """Redis was unreachable, so the trigger passed through (docs/architecture.md#failure-modes): the caller counts it here."""
    metrics.FAIL_OPEN.inc()


def count_postgres_diversion() -> None:
    """Postgres was unreachable on the pass-through path, so the trigger went into the buffer instead."""
    metrics.POSTGRES_DIVERSIONS.inc()


def _decide(
    buffer: Buffer, *, org_id: int, env_id: int, enrolled: bool, bypass: bool, now_ms: int, cfg: MollifierSettings
) -> Decision:
    if not cfg.ENABLED:
        return Decision(Action.PASS_THROUGH, Reason.DISABLED)
    if bypass:
        return Decision(Action.PASS_THROUGH, Reason.BYPASS)
    if not enrolled and not cfg.SHADOW_MODE:
        return Decision(Action.PASS_THROUGH, Reason.NOT_ENROLLED)

    tripped, count = buffer.trip(
        org_id=org_id,
        env_id=env_id,
        now_ms=now_ms,
        window_ms=cfg.TRIP_WINDOW_MS,
        threshold=cfg.TRIP_THRESHOLD,
        hold_ms=cfg.HOLD_MS,
    )
    if not tripped:
        return Decision(Action.PASS_THROUGH, Reason.BELOW_THRESHOLD, count)
    if enrolled:
        return Decision(Action.MOLLIFY, Reason.TRIPPED, count)
    logger.info(
        "mollifier shadow: would mollify env=%s org=%s count=%s",
        env_id,
        org_id,
        count,
        extra={"env_id": env_id, "org_id": org_id, "count": count},
    )
    return Decision(Action.PASS_THROUGH, Reason.SHADOW, count)
