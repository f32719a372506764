"""The drain's limits as one small typed value, built where a shard task starts and passed down."""

from __future__ import annotations

from dataclasses import dataclass

from mollifier_project.config import MollifierSettings


@dataclass(frozen=True, slots=True)
class DrainLimits:
    """How much one shard task may do; see docs/architecture.md#settings for each setting."""

    time_budget_ms: int  # DRAIN_TIME_BUDGET_MS: a shard task stops starting rounds after this long
    round_budget: int  # ROUND_BUDGET: entries leased per round, shared max-min among the chosen envs
    round_max_bytes: int  # ROUND_MAX_BYTES: snapshot bytes per round, split evenly among the chosen envs
    max_orgs_per_round: int  # MAX_ORGS_PER_ROUND
    lease_ms: int  # LEASE_MS: how long a leased entry may stay in flight before it is reclaimed
    max_attempts: int  # MAX_ATTEMPTS: then a SYSTEM_FAILURE row
    ack_grace_ms: int  # ACK_GRACE_S in ms: how long an acked entry stays readable
    lease_ahead: bool = False  # DRAIN_LEASE_AHEAD: lease the next round while this one commits
    request_key_ttl_s: int = 600  # REQUEST_KEY_TTL_S: how long a request key names one run

    @classmethod
    def from_settings(cls, cfg: MollifierSettings) -> DrainLimits:
        return cls(
            time_budget_ms=cfg.DRAIN_TIME_BUDGET_MS,
            round_budget=cfg.ROUND_BUDGET,
            round_max_bytes=cfg.ROUND_MAX_BYTES,
            max_orgs_per_round=cfg.MAX_ORGS_PER_ROUND,
            lease_ms=cfg.LEASE_MS,
            max_attempts=cfg.MAX_ATTEMPTS,
            ack_grace_ms=cfg.ACK_GRACE_S * 1000,
            lease_ahead=cfg.DRAIN_LEASE_AHEAD,
            request_key_ttl_s=cfg.REQUEST_KEY_TTL_S,
        )
