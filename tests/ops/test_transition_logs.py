"""Logs that say what changed, not everything seen (docs/operations.md#logs): the gate logs an env's trip
and its recovery, not a line per window while the storm lasts; the sweep writes one line per env per pass,
not one per stuck entry."""

from __future__ import annotations

import logging
import uuid

import pytest
from django.conf import settings

from buffer import gate
from buffer.buffer import Buffer
from tests.sweep.conftest import THRESHOLD_MS
from tests.sweep.test_logs import render

THRESHOLD, WINDOW, HOLD = 2, 1_000, 1_000


def cfg(**overrides):
    base = {"ENABLED": True, "SHADOW_MODE": False, "TRIP_THRESHOLD": THRESHOLD, "TRIP_WINDOW_MS": WINDOW,
            "HOLD_MS": HOLD}  # fmt: skip
    return settings.MOLLIFIER.model_copy(update={**base, **overrides})


class ScriptedBuffer:
    """Stands in for Buffer on the gate's path: answers ``trip`` from a script and has nothing else, so a
    test fails if logging needed any other Redis call."""

    def __init__(self, answers):
        self.prefix = f"fake-{uuid.uuid4().hex[:8]}"
        self.answers = list(answers)
        self.calls = 0

    def trip(self, **kwargs):
        self.calls += 1
        return self.answers.pop(0)


def gate_lines(caplog):
    return [render(r) for r in caplog.records if r.name == "buffer.gate" and "would mollify" not in r.getMessage()]


def evaluate(buffer, now_ms, *, env_id=7, enrolled=True, config=None):
    return gate.evaluate(buffer, org_id=3, env_id=env_id, enrolled=enrolled, bypass=False, now_ms=now_ms,
                         cfg=config or cfg())  # fmt: skip


def test_a_storm_over_many_windows_logs_one_trip_and_one_recovery(key_prefix, mollifier_settings, caplog):
    """Real Redis, real trip script: three windows over the threshold, then quiet after the hold."""
    mollifier_settings(SHARDS=1)
    buffer = Buffer.from_settings()
    with caplog.at_level(logging.INFO, logger="buffer.gate"):
        for window in range(3):
            for i in range(10):
                evaluate(buffer, 5_000 + window * WINDOW + i)
        quiet = evaluate(buffer, 5_000 + 3 * WINDOW + HOLD + 10)  # the hold set in the last window has run out
        evaluate(buffer, 5_000 + 3 * WINDOW + HOLD + 20)

    assert quiet.reason == "below_threshold"
    docs = gate_lines(caplog)
    assert [d["message"].split(":")[0] for d in docs] == ["env 7 tripped", "env 7 recovered"]
    tripped, recovered = docs
    assert (tripped["env_id"], tripped["org_id"], tripped["count"], tripped["outcome"]) == (7, 3, 3, "mollify")
    assert (recovered["env_id"], recovered["org_id"]) == (7, 3)
    assert recovered["tripped_for_s"] == pytest.approx((3 * WINDOW + HOLD + 10 - 2) / 1000)


def test_a_second_storm_is_logged_again(caplog):
    t = THRESHOLD + 1
    buffer = ScriptedBuffer([(True, t), (True, t + 1), (False, 1), (True, t), (False, 1)])
    with caplog.at_level(logging.INFO, logger="buffer.gate"):
        for now in (1_000, 1_001, 3_000, 60_000, 62_000):
            evaluate(buffer, now)

    assert [d["message"].split(":")[0] for d in gate_lines(caplog)] == [
        "env 7 tripped", "env 7 recovered", "env 7 tripped", "env 7 recovered",
    ]  # fmt: skip
    assert buffer.calls == 5  # one trip call per trigger and nothing else: logging costs no Redis call


def test_a_process_that_did_not_see_the_trip_stays_silent_and_writes_no_recovery(caplog):
    """Another process logged the trip; this one only sees the storm go on (its counts are past the threshold,
    then a later window's threshold + 1 trigger) and end."""
    buffer = ScriptedBuffer([(True, 9), (True, THRESHOLD + 1), (True, 4), (False, 1)])
    with caplog.at_level(logging.INFO, logger="buffer.gate"):
        for now in (1_500, 2_000, 2_300, 4_000):
            evaluate(buffer, now)

    assert gate_lines(caplog) == []


def test_shadow_mode_trips_and_recovers_the_same_way(caplog):
    t = THRESHOLD + 1
    buffer = ScriptedBuffer([(True, t), (True, t + 5), (True, t), (False, 1)])
    with caplog.at_level(logging.INFO, logger="buffer.gate"):
        for now in (1_000, 1_200, 2_000, 4_000):
            evaluate(buffer, now, enrolled=False, config=cfg(SHADOW_MODE=True))

    docs = gate_lines(caplog)
    assert [(d["message"].split(":")[0], d.get("outcome")) for d in docs] == [
        ("env 7 tripped", "pass_through"), ("env 7 recovered", None),
    ]  # fmt: skip


def test_envs_are_tracked_apart(caplog):
    t = THRESHOLD + 1
    buffer = ScriptedBuffer([(True, t), (True, t), (False, 1), (False, 1)])
    with caplog.at_level(logging.INFO, logger="buffer.gate"):
        evaluate(buffer, 1_000, env_id=1)
        evaluate(buffer, 1_000, env_id=2)
        evaluate(buffer, 3_000, env_id=2)
        evaluate(buffer, 3_000, env_id=1)

    assert [d["message"].split(":")[0] for d in gate_lines(caplog)] == [
        "env 1 tripped", "env 2 tripped", "env 2 recovered", "env 1 recovered",
    ]  # fmt: skip


def test_a_long_pause_in_what_this_process_sees_counts_as_a_new_storm(caplog):
    """Seen tripped, then nothing for longer than hold + window: the next threshold + 1 trigger is a new trip."""
    t = THRESHOLD + 1
    buffer = ScriptedBuffer([(True, t), (True, t)])
    with caplog.at_level(logging.INFO, logger="buffer.gate"):
        evaluate(buffer, 1_000)
        evaluate(buffer, 1_000 + HOLD + WINDOW + 1)

    assert [d["message"].split(":")[0] for d in gate_lines(caplog)] == ["env 7 tripped", "env 7 tripped"]


def test_the_memory_of_tripped_envs_is_bounded(monkeypatch):
    monkeypatch.setattr(gate._Storms, "MAX_ENVS", 50)
    storms = gate._Storms()
    monkeypatch.setattr(gate, "_STORMS", storms)
    buffer = ScriptedBuffer([(True, THRESHOLD + 1)] * 500)

    for env in range(500):
        evaluate(buffer, 1_000 + env * 10_000, env_id=env)

    assert len(storms.envs) <= 50


# ------------------------------------------------------------------------------------------- the sweep


@pytest.mark.django_db
def test_sweep_writes_one_line_per_env_however_many_entries_are_stuck(buffer, park, sweep_pass, caplog):
    many = park(4, 44, now_ms=1_000, count=30)
    few = park(5, 55, now_ms=2_000, count=2)
    buffer.dead_letter(0, few[0], now_ms=2_500, reason="env deleted")
    with caplog.at_level(logging.INFO, logger="sweep.sweep"):
        sweep_pass(1_000 + THRESHOLD_MS + 5_000)

    docs = [render(r) for r in caplog.records if r.name == "sweep.sweep"]
    assert [d["env_id"] for d in docs] == [44, 55]
    big, small = docs
    assert (big["org_id"], big["stale"], big["new_stuck"], big["kinds"]) == (4, 30, 30, {"STALE": 30})
    assert len(big["sample_run_ids"]) == 5 and set(big["sample_run_ids"]) <= set(many)
    assert big["max_age_s"] == 15
    assert (small["org_id"], small["stale"], small["new_stuck"]) == (5, 1, 2)
    assert small["kinds"] == {"DEAD": 1, "STALE": 1}
    assert set(small["sample_run_ids"]) == set(few)
    assert small["last_error"] == "env deleted"


@pytest.mark.django_db
def test_sweep_logs_nothing_for_a_quiet_env(buffer, park, sweep_pass, caplog):
    park(4, 44, now_ms=1_000)
    with caplog.at_level(logging.INFO, logger="sweep.sweep"):
        sweep_pass(1_000 + THRESHOLD_MS - 1)  # not stale yet

    assert [r for r in caplog.records if r.name == "sweep.sweep" and r.levelno >= logging.WARNING] == []
