"""The gate (docs/architecture.md#gate): truth table, bypasses, shadow mode, metrics — trip evaluation observed in Redis."""

from __future__ import annotations

import logging

import pytest
import redis
from django.conf import settings
from prometheus_client import REGISTRY
from redis.backoff import NoBackoff
from redis.retry import Retry

from buffer.buffer import Buffer
from buffer.client import CLIENT_OPTIONS
from buffer.gate import Action, count_fail_open, count_postgres_diversion, evaluate

ORG, ENV = 1, 10
NOW = 10_500  # NOW - 1 is in the same 1 s window


def make_cfg(**overrides):
    base = {"ENABLED": True, "SHADOW_MODE": False, "TRIP_WINDOW_MS": 1_000, "TRIP_THRESHOLD": 2, "HOLD_MS": 5_000}
    return settings.MOLLIFIER.model_copy(update={**base, **overrides})


def trip_env(buffer, cfg):
    """Push the env over the threshold directly, so it is tripped at NOW."""
    for _ in range(cfg.TRIP_THRESHOLD + 1):
        buffer.trip(
            org_id=ORG,
            env_id=ENV,
            now_ms=NOW - 1,
            window_ms=cfg.TRIP_WINDOW_MS,
            threshold=cfg.TRIP_THRESHOLD,
            hold_ms=cfg.HOLD_MS,
        )


def rate_count(buffer) -> int:
    return int(buffer._client.hget(buffer.keys_for_org(ORG).rate(ENV), "count") or 0)


def decisions(outcome, reason) -> float:
    return REGISTRY.get_sample_value("mollifier_decisions_total", {"outcome": outcome, "reason": reason}) or 0.0


def run_gate(buffer, cfg, *, enrolled=True, bypass=False, now_ms=NOW):
    return evaluate(buffer, org_id=ORG, env_id=ENV, enrolled=enrolled, bypass=bypass, now_ms=now_ms, cfg=cfg)


def unreachable_buffer() -> Buffer:
    """A buffer whose Redis refuses connections (nothing listens on port 1); no retries, so it fails at once."""
    client = redis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.2, **CLIENT_OPTIONS, retry=Retry(NoBackoff(), 0)
    )
    return Buffer(client, prefix="x", shards=1)


def _expected(enabled, shadow, enrolled, tripped):
    """(action, reason, trip evaluated?) per docs/architecture.md#gate."""
    if not enabled:
        return "pass_through", "disabled", False
    if not enrolled and not shadow:
        return "pass_through", "not_enrolled", False
    if not tripped:
        return "pass_through", "below_threshold", True
    return ("mollify", "tripped", True) if enrolled else ("pass_through", "shadow", True)


TABLE = [
    (enabled, shadow, enrolled, tripped, *_expected(enabled, shadow, enrolled, tripped))
    for enabled in (False, True)
    for shadow in (False, True)
    for enrolled in (False, True)
    for tripped in (False, True)
]


@pytest.mark.parametrize(("enabled", "shadow", "enrolled", "tripped", "action", "reason", "evaluated"), TABLE)
def test_gate_truth_table(buffer, enabled, shadow, enrolled, tripped, action, reason, evaluated):
    cfg = make_cfg(ENABLED=enabled, SHADOW_MODE=shadow)
    if tripped:
        trip_env(buffer, cfg)
    count_before = rate_count(buffer)
    counted_before = decisions(action, reason)

    decision = run_gate(buffer, cfg, enrolled=enrolled)

    assert (decision.action, decision.reason) == (action, reason)
    assert decision.mollify is (action == "mollify")
    assert rate_count(buffer) - count_before == (1 if evaluated else 0)
    assert decisions(action, reason) - counted_before == 1


@pytest.mark.parametrize("enrolled", [True, False])
def test_bypass_passes_through_uncounted_even_while_tripped(buffer, enrolled):
    cfg = make_cfg(SHADOW_MODE=True)
    trip_env(buffer, cfg)
    count_before = rate_count(buffer)
    counted_before = decisions("pass_through", "bypass")

    decision = run_gate(buffer, cfg, enrolled=enrolled, bypass=True)

    assert (decision.action, decision.reason) == (Action.PASS_THROUGH, "bypass")
    assert rate_count(buffer) == count_before
    assert decisions("pass_through", "bypass") - counted_before == 1


def test_bypassed_triggers_do_not_trip_the_env(buffer):
    cfg = make_cfg(TRIP_THRESHOLD=1)
    for _ in range(5):
        run_gate(buffer, cfg, bypass=True)

    assert run_gate(buffer, cfg).reason == "below_threshold"


def test_disabled_gate_passes_through_when_redis_is_down():
    """Switched off, the gate never talks to Redis at all."""
    dead = unreachable_buffer()

    assert run_gate(dead, make_cfg(ENABLED=False)).reason == "disabled"


def test_redis_errors_propagate_so_the_caller_can_fail_open():
    dead = unreachable_buffer()

    with pytest.raises(redis.ConnectionError):
        run_gate(dead, make_cfg())


def test_storm_trips_the_gate_in_a_fixed_window_and_recovers_after_the_hold(buffer):
    cfg = make_cfg(TRIP_WINDOW_MS=200, TRIP_THRESHOLD=3, HOLD_MS=500)

    reasons = [run_gate(buffer, cfg, now_ms=1_000 + i).reason for i in range(5)]
    assert reasons == ["below_threshold"] * 3 + ["tripped"] * 2  # 4th and 5th exceed the threshold

    assert run_gate(buffer, cfg, now_ms=1_503).reason == "tripped"  # held until 1_004 + 500
    assert run_gate(buffer, cfg, now_ms=1_504).reason == "below_threshold"


def test_shadow_mode_logs_would_mollify_with_the_ids(buffer, caplog):
    cfg = make_cfg(SHADOW_MODE=True)
    trip_env(buffer, cfg)

    with caplog.at_level(logging.INFO, logger="buffer.gate"):
        decision = run_gate(buffer, cfg, enrolled=False)

    assert decision.reason == "shadow"
    (record,) = [r for r in caplog.records if "would mollify" in r.getMessage()]
    assert f"env={ENV}" in record.getMessage()
    assert f"org={ORG}" in record.getMessage()
    assert (record.env_id, record.org_id) == (ENV, ORG)


def test_decision_metric_labels_never_carry_tenant_ids(buffer):
    run_gate(buffer, make_cfg())

    samples = [s for metric in REGISTRY.collect() if metric.name == "mollifier_decisions" for s in metric.samples]
    assert samples
    assert all(set(sample.labels) <= {"outcome", "reason"} for sample in samples)
    assert all(str(ENV) not in sample.labels.values() and str(ORG) not in sample.labels.values() for sample in samples)


@pytest.mark.parametrize(
    ("count", "sample"),
    [(count_fail_open, "mollifier_fail_open_total"), (count_postgres_diversion, "mollifier_postgres_diversions_total")],
)
def test_trigger_service_fallbacks_are_counted(count, sample):
    before = REGISTRY.get_sample_value(sample) or 0.0

    count()

    assert REGISTRY.get_sample_value(sample) - before == 1
