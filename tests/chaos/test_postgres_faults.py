"""Chaos: Postgres goes away mid-drain — restarted, or switched read-only — and comes back
(docs/architecture.md#postgres-outage-circuit, #failure-modes, #guarantees 1 and 2).

Beat, a solo worker and a steady stream of triggers (``Producer``, 1,000/s parked in the buffer) run
throughout. Once the drain is under way Postgres fails for ``FAULT_S`` seconds:

- **restart**: what a restart does to the test database's clients — every session is terminated (57P01,
  as a shutdown does) and new connections are refused until it is "up" again. The server is shared by
  other test runs on this machine, so it is not really restarted (``pg_ctlcluster … restart`` would kill
  their sessions too): ``Outage`` from tests/drainer/processes.py turns connections to this database away
  (``ALLOW_CONNECTIONS false``) and terminates its backends, as tests/drainer/test_processes.py does.
- **read-only**: a failover onto a demoted primary. ``read_only_postgres`` from
  tests/drainer/test_refused_writes.py (``ALTER DATABASE … SET default_transaction_read_only``), and the
  sessions of the moment are terminated so that the worker reconnects into read-only sessions: every
  write is 25006 until the database is switched back.

Then: nothing lost (one PENDING row per accepted trigger), nothing dead-lettered, no SYSTEM_FAILURE, no row
with an error, every entry acked with attempts 0 (an outage costs no attempt; acked entries stay readable
for ACK_GRACE_S), the buffer's structure intact, and the first row after recovery within 5 s.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from runs.models import TaskRun
from tests.chaos.storm import Storm, assert_buffer_consistent, dead_letters, envs_over_shards, rows_of_envs
from tests.drainer.processes import Outage, Producer, other_sessions, wait_until
from tests.drainer.test_processes import assert_one_live_row_each, entry_states, settled
from tests.drainer.test_refused_writes import read_only_postgres

SHARDS = 2
FAULT_S = 3.0
RESUME_WITHIN_S = 5.0
PER_SECOND = 1_000


def go_down(outage: Outage) -> None:
    """A restart's shutdown: no new session gets in, every existing one is terminated."""
    outage.refuse(True)
    outage.cut()


def stay_down(outage: Outage) -> None:
    """While down, terminate again whatever slipped in (a session half set up at the first cut)."""
    until = time.monotonic() + FAULT_S
    while time.monotonic() < until:
        outage.cut()
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("fault", ["restart", "read-only"])
def test_postgres_fault_mid_drain_loses_nothing_costs_no_attempts_and_drain_resumes_within_5_s(start_cluster, fault):
    started = time.monotonic()
    cluster, buffer = start_cluster(SHARDS=SHARDS, DRAIN_INTERVAL_S=0.5, ROUND_BUDGET=200)
    envs = envs_over_shards(SHARDS)
    storm = Storm(buffer, envs)
    worker, beat = cluster.start_worker("w1"), cluster.start_beat()
    cluster.wait_ready(worker, beat)

    producer = Producer(storm.accept, per_second=PER_SECOND)
    producer.start()
    try:
        wait_until(lambda: rows_of_envs(envs) >= 500, timeout=30, what="the drain to be under way")
        if fault == "restart":
            outage = Outage()
            try:
                # Mid-drain: strike once the worker holds a session (it keeps one between tasks, so the blow
                # lands in a task or between two; the outage that follows hits the next task either way). The
                # first blow is the kill itself, so a task that ends between a look and the blow cannot make
                # the fault miss the drain.
                wait_until(lambda: outage.cut() > 0, timeout=10, interval=0.005, what="a drain task's session cut")
                go_down(outage)
                rows_before = rows_of_envs(envs)  # our own session was spared
                stay_down(outage)
                rows_during = rows_of_envs(envs) - rows_before
                outage.refuse(False)
                recovered_at = time.monotonic()  # connections are allowed again
            finally:
                outage.close()
        else:
            wait_until(other_sessions, timeout=10, interval=0.005, what="a drain task holding a session")
            with read_only_postgres():
                outage = Outage()  # spares the test's own (now read-only) session
                try:
                    outage.cut()  # sessions opened before the switch: their owners reconnect into read-only ones
                    rows_before = rows_of_envs(envs)
                    time.sleep(FAULT_S)
                    rows_during = rows_of_envs(envs) - rows_before
                finally:
                    outage.close()
            recovered_at = time.monotonic()  # default_transaction_read_only is reset
        rows_at_recovery = rows_of_envs(envs)
        resume_s = None
        while time.monotonic() - recovered_at < 20:
            if rows_of_envs(envs) > rows_at_recovery:
                resume_s = time.monotonic() - recovered_at
                break
            time.sleep(0.02)
    finally:
        ids = producer.stop()
    wait_until(lambda: settled(buffer, storm.made), timeout=30, interval=0.2, what="every entry to be acked or dead")
    caught_up_s = time.monotonic() - recovered_at
    states = entry_states(buffer, storm.made)
    reports = [r["retval"] for r in cluster.drain_reports() if r["retval"] and not r["retval"].get("locked")]
    outage_reports = sum(1 for r in reports if r.get("outage"))
    released = sum(r.get("released", 0) for r in reports)
    behind = len(storm.made) - rows_at_recovery
    print(
        f"\nchaos: postgres {fault}: {len(ids)} triggers at {PER_SECOND}/s, {rows_before} rows before the fault,"
        f" {rows_during} rows written during the {FAULT_S:.0f} s fault, {outage.terminated} sessions terminated,"
        f" {outage_reports} drain tasks hit the outage and released {released} entries; {behind} behind at"
        f" recovery; first row {resume_s if resume_s is None else round(resume_s, 2)} s after Postgres was"
        f" writable again, caught up after {caught_up_s:.2f} s; {TaskRun.objects.count()} rows, entry states"
        f" {dict(Counter(states.values()))}, {dead_letters(buffer)} dead"
        f" letters; {time.monotonic() - started:.1f} s in all"
    )

    assert rows_during == 0  # the fault was real: nothing could be written while it lasted
    assert outage_reports > 0 and released > 0  # and it hit the drain (the test is not vacuous)
    if fault == "restart":
        assert outage.terminated > 0
    assert len(ids) == len(set(ids)) and rows_of_envs(envs) == len(ids)  # nothing lost, nothing extra
    assert_one_live_row_each(ids)  # all PENDING; no SYSTEM_FAILURE anywhere
    assert not TaskRun.objects.filter(error__isnull=False).exists()
    assert set(states.values()) == {("ACKED", 0)}  # acked, and the outage cost no attempt
    assert dead_letters(buffer) == 0
    assert_buffer_consistent(buffer, cluster, beat)
    assert resume_s is not None and resume_s <= RESUME_WITHIN_S, resume_s
