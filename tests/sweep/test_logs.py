"""Structured logs (docs/architecture.md#telemetry): JSON lines that carry the env and org ids the metrics must not — for stale
entries, drain outcomes and gate decisions, from web and Celery processes alike."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from buffer import gate
from buffer.buffer import Buffer
from buffer.values import Entry, EntryStatus
from drainer import telemetry as drain_telemetry
from drainer.drain import Report
from mollifier_project.logs import JsonFormatter
from tests.sweep.conftest import THRESHOLD_MS

ROOT = Path(__file__).resolve().parents[2]


def render(record: logging.LogRecord) -> dict:
    line = JsonFormatter().format(record)
    assert "\n" not in line
    return json.loads(line)


def test_formatter_writes_one_json_object_with_the_extra_fields():
    record = logging.makeLogRecord(
        {"name": "sweep.sweep", "levelname": "WARNING", "levelno": 30, "msg": "%s stale", "args": (3,),
         "env_id": 11, "org_id": 1, "run_id": "run_x", "when": object()}
    )  # fmt: skip

    doc = render(record)

    assert (doc["level"], doc["logger"], doc["message"]) == ("WARNING", "sweep.sweep", "3 stale")
    assert (doc["env_id"], doc["org_id"], doc["run_id"]) == (11, 1, "run_x")
    assert doc["when"].startswith("<object")  # not JSON-serialisable: written as text, never an error
    assert doc["time"].endswith("+00:00")
    assert not {"args", "msg", "levelno", "pathname"} & set(doc)


def test_formatter_includes_the_traceback():
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())

    assert "ValueError: boom" in render(record)["exc_info"]


def test_json_is_the_default_log_format():
    assert settings.LOGGING["handlers"]["console"]["formatter"] == "json"
    assert settings.LOGGING["formatters"]["json"]["()"] == "mollifier_project.logs.JsonFormatter"


def test_celery_processes_log_json_lines_too():
    code = (
        "from mollifier_project.celery import app\n"
        "app.log.setup(loglevel='INFO')\n"
        "import logging; logging.getLogger('drainer.drain').warning('requeued', extra={'env_id': 5, 'org_id': 6})\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "mollifier_project.settings"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert [(d["message"], d["env_id"], d["org_id"]) for d in lines] == [("requeued", 5, 6)], done.stderr


@pytest.mark.django_db
def test_sweep_logs_stale_envs_and_new_stuck_entries_with_their_ids(buffer, park, sweep_pass, caplog):
    (run_id,) = park(4, 44, now_ms=1_000)
    with caplog.at_level(logging.INFO, logger="sweep.sweep"):
        sweep_pass(1_000 + THRESHOLD_MS + 1)
        sweep_pass(1_000 + THRESHOLD_MS + 2)  # seen again: no second "stuck entry" line

    docs = [render(r) for r in caplog.records]  # one line per env per pass (tests/ops/test_transition_logs.py)
    assert [(d["env_id"], d["org_id"], d["stale"], d["new_stuck"]) for d in docs] == [(44, 4, 1, 1), (44, 4, 1, 0)]
    assert (docs[0]["kinds"], docs[0]["sample_run_ids"], docs[0]["max_age_s"]) == ({"STALE": 1}, [run_id], 10)


def test_drain_round_logs_one_line_per_env_with_its_ids(key_prefix, mollifier_settings, caplog):
    mollifier_settings(SHARDS=1)
    entries = [
        Entry(run_id=f"run_{i}", env_id=env, org_id=9, status=EntryStatus.LEASED, snapshot="{}", attempts=0,
              accepted_ms=10_000 - 1_000 * i)
        for i, env in enumerate((91, 91, 92))
    ]  # fmt: skip
    with caplog.at_level(logging.INFO, logger="drainer.telemetry"):
        drain_telemetry.record_round(Buffer.from_settings(), shard=0, report=Report(leased=3, created=3), entries=entries,
                               acked=[e.run_id for e in entries], now_ms=10_000)  # fmt: skip

    docs = sorted((render(r) for r in caplog.records), key=lambda d: d["env_id"])
    assert [(d["org_id"], d["env_id"], d["drained"], d["max_dwell_ms"]) for d in docs] == [
        (9, 91, 2, 1_000), (9, 92, 1, 2_000),
    ]  # fmt: skip


def test_gate_logs_the_trip_with_the_tenant_ids(key_prefix, mollifier_settings, caplog):
    cfg = mollifier_settings(SHARDS=1, ENABLED=True, TRIP_THRESHOLD=2, TRIP_WINDOW_MS=1_000)
    buffer = Buffer.from_settings()
    with caplog.at_level(logging.INFO, logger="buffer.gate"):
        for _ in range(5):
            gate.evaluate(buffer, org_id=3, env_id=33, enrolled=True, bypass=False, now_ms=5_000, cfg=cfg)

    docs = [render(r) for r in caplog.records]
    assert [(d["env_id"], d["org_id"], d["count"], d["outcome"]) for d in docs] == [(33, 3, 3, "mollify")]
