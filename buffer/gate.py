"""The gate: at trigger time, write the row now (pass through) or park the snapshot (mollify) (docs/architecture.md#gate).

Order of the checks, each cheaper than the next and each stopping evaluation:

1. master switch ``ENABLED`` off → pass through, nothing counted (the feature is inert);
2. bypass (a child whose parent waits on it, a debounced trigger, a one-time-use token — the caller
   decides) → pass through, not counted toward the rate, because buffering it would stall its parent
   or break its semantics;
3. org not enrolled and ``SHADOW_MODE`` off → pass through, not evaluated;
4. otherwise one ``trip`` call counts the trigger and reads the env's tripped marker (the trigger path makes
   that count inside its one-round-trip script instead: ``precheck``, then ``from_trip`` and ``record``). Enrolled orgs are
   mollified while tripped; non-enrolled orgs (shadow mode) only log "would mollify".

Every evaluation increments ``mollifier_decisions_total{outcome, reason}``. Redis errors propagate: the
trigger service fails open and counts that itself.

Logs: a storm writes a line when its env trips and one when it recovers, not one per window while it lasts.
``trip.lua`` answers only ``(tripped, count)``, and reading whether the marker was already set would cost
another Redis call per trigger, so the transitions are found in process memory (``_Storms``):

* **tripped** — the trigger that pushed a window over the threshold (``count == TRIP_THRESHOLD + 1``:
  one trigger per window, whichever process serves it), unless this process already saw the env tripped
  within the last ``HOLD_MS + TRIP_WINDOW_MS`` (then the storm merely goes on into another window);
* **recovered** — written by the process that wrote the trip line, at its first untripped decision for the
  env, with how long the storm lasted as it saw it.

So a storm is normally one trip line and one recovery line for the whole deployment. A process whose first
sight of a running storm is a window's first trigger over the threshold writes a second trip line, and a
recovery the logging process never sees (no more triggers reach it) is not written. The memory is one small
entry per env this process currently sees tripped, capped at ``_Storms.MAX_ENVS``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
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
    decision = precheck(enrolled=enrolled, bypass=bypass, cfg=cfg)
    if decision is None:
        tripped, count = buffer.trip(
            org_id=org_id, env_id=env_id, now_ms=now_ms, window_ms=cfg.TRIP_WINDOW_MS, threshold=cfg.TRIP_THRESHOLD,
            hold_ms=cfg.HOLD_MS,
        )  # fmt: skip
        decision = from_trip(tripped, count, org_id=org_id, env_id=env_id, enrolled=enrolled)
    record(decision, prefix=buffer.prefix, org_id=org_id, env_id=env_id, now_ms=now_ms, cfg=cfg)
    return decision


def precheck(*, enrolled: bool, bypass: bool, cfg: MollifierSettings) -> Decision | None:
    """Steps 1–3: the decision when no trip is needed, else None (count the trigger: ``buffer.trip``, or
    the trigger script, which counts it in the same round trip as the claims and the accept)."""
    if not cfg.ENABLED:
        return Decision(Action.PASS_THROUGH, Reason.DISABLED)
    if bypass:
        return Decision(Action.PASS_THROUGH, Reason.BYPASS)
    if not enrolled and not cfg.SHADOW_MODE:
        return Decision(Action.PASS_THROUGH, Reason.NOT_ENROLLED)
    return None


def from_trip(tripped: bool, count: int, *, org_id: int, env_id: int, enrolled: bool) -> Decision:
    """Step 4: the decision for a counted trigger (shadow mode logs "would mollify")."""
    if not tripped:
        return Decision(Action.PASS_THROUGH, Reason.BELOW_THRESHOLD, count)
    if enrolled:
        return Decision(Action.MOLLIFY, Reason.TRIPPED, count)
    logger.info(
        "mollifier shadow: would mollify env=%s org=%s count=%s", env_id, org_id, count,
        extra={"env_id": env_id, "org_id": org_id, "count": count},
    )  # fmt: skip
    return Decision(Action.PASS_THROUGH, Reason.SHADOW, count)


def record(decision: Decision, *, prefix: str, org_id: int, env_id: int, now_ms: int, cfg: MollifierSettings) -> None:
    """Count the evaluation in ``mollifier_decisions_total`` and log a storm's transitions (module docstring)."""
    metrics.DECISIONS.labels(outcome=decision.action.value, reason=decision.reason.value).inc()
    if decision.count is not None:  # the trip was evaluated
        _STORMS.observe(prefix, org_id=org_id, env_id=env_id, decision=decision, now_ms=now_ms, cfg=cfg)


@dataclass(slots=True)
class _Storm:
    since_ms: int  # this process's first tripped decision for the env
    seen_ms: int  # its latest one
    logged: bool  # this process wrote the trip line, so it writes the recovery line


@dataclass
class _Storms:
    """The envs this process currently sees tripped, keyed by (key prefix, env): the trip and recovery lines."""

    MAX_ENVS = 10_000  # beyond this many tripped envs, forget the ones not seen tripped lately
    envs: dict[tuple[str, int], _Storm] = field(default_factory=dict)

    def observe(
        self, prefix: str, *, org_id: int, env_id: int, decision: Decision, now_ms: int, cfg: MollifierSettings
    ) -> None:
        key = (prefix, env_id)
        storm = self.envs.get(key)
        if decision.reason not in (Reason.TRIPPED, Reason.SHADOW):  # not tripped (below threshold)
            if storm is not None:
                del self.envs[key]
                if storm.logged:
                    lasted_s = round(max(0, now_ms - storm.since_ms) / 1000, 3)
                    logger.info(
                        "env %s recovered: no longer tripped after %s s", env_id, lasted_s,
                        extra={"env_id": env_id, "org_id": org_id, "count": decision.count, "tripped_for_s": lasted_s},
                    )  # fmt: skip
            return
        if storm is not None and now_ms - storm.seen_ms <= cfg.HOLD_MS + cfg.TRIP_WINDOW_MS:
            storm.seen_ms = max(storm.seen_ms, now_ms)  # the storm goes on
            return
        first = decision.count == cfg.TRIP_THRESHOLD + 1
        if len(self.envs) >= self.MAX_ENVS:
            self._forget_quiet(now_ms - cfg.HOLD_MS - cfg.TRIP_WINDOW_MS)
        self.envs[key] = _Storm(since_ms=now_ms, seen_ms=now_ms, logged=first)
        if first:
            # With the tenant ids the metric labels must not carry (docs/architecture.md#telemetry).
            logger.info(
                "env %s tripped: %s triggers in the window", env_id, decision.count,
                extra={"env_id": env_id, "org_id": org_id, "count": decision.count, "outcome": decision.action.value,
                       "reason": decision.reason.value},
            )  # fmt: skip

    def _forget_quiet(self, before_ms: int) -> None:
        """Drop the envs not seen tripped since ``before_ms``; if that is not enough, start over (a recovery
        line may go unwritten, never a wrong one)."""
        self.envs = {key: storm for key, storm in self.envs.items() if storm.seen_ms >= before_ms}
        if len(self.envs) >= self.MAX_ENVS:
            self.envs.clear()


_STORMS = _Storms()


def count_fail_open() -> None:
    """Redis was unreachable, so the trigger passed through (docs/architecture.md#failure-modes): the caller counts it here."""
    metrics.FAIL_OPEN.inc()


def count_postgres_diversion() -> None:
    """Postgres was unreachable on the pass-through path, so the trigger went into the buffer instead."""
    metrics.POSTGRES_DIVERSIONS.inc()
