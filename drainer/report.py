"""What a drain round, or a whole shard task, did — the value the drain returns and its telemetry records."""

from __future__ import annotations

from dataclasses import dataclass, field

# The per-entry outcome counts of a round, in the order telemetry and logs show them.
# ``duplicate``: an entry acked without a row, its request key held by another run (docs/architecture.md#request-keys-across-an-outage).
OUTCOMES = ("created", "existed", "cancelled", "failed", "duplicate", "dead", "requeued", "released")
MAX_DEAD_REASONS = 10  # a shard task's report stays small however many entries a storm dead-letters


@dataclass
class Report:
    """What a round (or a whole shard run) did; counts are entries."""

    leased: int = 0
    created: int = 0
    existed: int = 0
    cancelled: int = 0
    failed: int = 0
    duplicate: int = 0
    dead: int = 0
    requeued: int = 0
    released: int = 0
    reclaimed: int = 0
    rounds: int = 0
    outage: bool = False
    circuit_open: bool = False
    # The round took everything queued when it started (every org and env chosen, every share = demand):
    # the shard task stops there; what arrives meanwhile waits for its successor at the drain queue's tail
    # (kick on) or the next tick, not for a loop of one-entry rounds that would keep the worker from the
    # other shards.
    emptied: bool = False
    # Why entries were dead-lettered: the distinct reasons, first ones first, at most MAX_DEAD_REASONS
    # (an operator's repair reports them next to its counts).
    dead_reasons: list[str] = field(default_factory=list)

    def add(self, other: Report) -> None:
        for name in (*OUTCOMES, "leased", "reclaimed", "rounds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.outage = self.outage or other.outage
        for reason in other.dead_reasons:
            self.note_dead_reason(reason)

    def note_dead_reason(self, reason: str) -> None:
        if reason not in self.dead_reasons and len(self.dead_reasons) < MAX_DEAD_REASONS:
            self.dead_reasons.append(reason)

    def outcome_counts(self) -> dict[str, int]:
        """The non-zero outcome counts, by outcome name."""
        return {name: getattr(self, name) for name in OUTCOMES if getattr(self, name)}
