"""Shared by the operator-screen tests: the metric names /metrics really exports, read from a scrape of real Redis."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from buffer.buffer import Buffer
from telemetry import collector
from tests.sweep.conftest import buffer, park, sweep_pass  # noqa: F401  (the sweep's fixtures, for the sweep log tests)

SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}


def exported_names(text: str) -> set[str]:
    """Every series name a PromQL expression may use: each sample's name, and for a family without samples yet
    (a labelled counter nobody incremented in this process) the names its type gives it."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


@pytest.fixture
def exported(key_prefix, mollifier_settings) -> set[str]:
    mollifier_settings(SHARDS=2)
    # data_losses: what the view reads from Postgres and passes in (tests/drainer/test_epoch.py scrapes the view).
    text = collector.exposition(
        Buffer.from_settings(), now_ms=1_000_000, stale_threshold_s=300, sweep_enabled=True, data_losses=0
    )
    return exported_names(text.decode())
