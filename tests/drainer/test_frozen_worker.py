"""A drain worker frozen (SIGSTOP) inside its materialise transaction, holding its round's uncommitted rows,
must not stall the rest of its shard (docs/architecture.md#race-analysis, drainer/drain.py crash point 9).

Real processes: two ``celery worker --pool solo`` subprocesses, real Postgres and Redis. The freeze point is
deterministic and needs no hook in product code: a ``RowLock`` (an uncommitted INSERT from the test's own
session) holds the last run id of the victim's first round, so the victim's COPY writes the other 99 rows and
waits there; the test SIGSTOPs the victim, then rolls the RowLock back, and the victim's backend finishes the
COPY and sits "idle in transaction" for a client that is frozen — holding 99 row locks, as in the field.

The victim takes its task from a private queue; the rescuer gets the ticks. While the victim stays frozen the
test samples how many rows of the rest of the shard (the 900 runs behind the frozen round) are written, and
when they are all there. Then SIGCONT: every answered run has exactly one live row, each created once, and
the victim acked nothing (its transaction did not commit).

Settings: a 5 s lease and a 1 s budget — a shard lock of budget + 5 s would outlive the lease, as in the
incident (2 s statement timeouts, the lease's half) — and rounds of 100.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import pytest

from tests.drainer.processes import RowLock, backend_state, inserts_waiting_on_a_lock, wait_until
from tests.drainer.test_processes import assert_one_live_row_each, entry_states, park, rows_of, settled
from tests.drainer.test_processes import start_cluster as start_cluster  # the process tests' fixture
from tests.factories import EnvironmentFactory, SnapshotFactory

LEASE_MS = 5_000
ROUND = 100
RUNS = 1_000
FREEZE_S = 12.0  # well past the lease: before the fix nothing of the rest was written in this long
TICK_S = 0.5


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_worker_frozen_inside_its_transaction_leaves_the_rest_of_its_shard_draining_within_the_lease(
    start_cluster,
):
    cluster, buffer = start_cluster(SHARDS=1, DRAIN_TIME_BUDGET_MS=1000, LEASE_MS=LEASE_MS, ROUND_BUDGET=ROUND)
    env = EnvironmentFactory()
    snaps = [SnapshotFactory(env=env) for _ in range(RUNS)]
    ids = park(buffer, snaps)
    frozen_round, rest = ids[:ROUND], ids[ROUND:]
    victim = cluster.start_worker("victim", queues="drain-victim")
    rescuer = cluster.start_worker("rescuer")
    cluster.wait_ready(victim, rescuer)

    hold = RowLock(frozen_round[-1], env.id, env.org_id)
    frozen = False
    try:
        cluster.send_drain(0, queue="drain-victim")
        (backend,) = wait_until(inserts_waiting_on_a_lock, timeout=20, what="the victim's COPY to wait on the lock")
        os.kill(victim.pid, signal.SIGSTOP)
        frozen, frozen_at = True, time.monotonic()
        hold.release()
        # The victim's backend finishes its COPY and waits for its frozen client, inside the transaction.
        wait_until(lambda: backend_state(backend) == "idle in transaction", timeout=10, what="idle in transaction")

        rest_done_s: float | None = None
        next_tick = 0.0
        while (elapsed := time.monotonic() - frozen_at) < FREEZE_S:
            if elapsed >= next_tick:
                cluster.send_drain(0, expires=2 * TICK_S)
                next_tick = elapsed + TICK_S
            if rest_done_s is None and rows_of(rest) == len(rest):
                rest_done_s = elapsed
            time.sleep(0.1)
        rest_written, round_written = rows_of(rest), rows_of(frozen_round)
    finally:
        hold.release()
        if frozen:
            os.kill(victim.pid, signal.SIGCONT)
    print(
        f"\nfrozen worker: {rest_written}/{len(rest)} rows of the rest of the shard and {round_written}/{ROUND} of"
        f" the frozen round written during a {FREEZE_S:.0f} s freeze; the rest complete after"
        f" {'never' if rest_done_s is None else f'{rest_done_s:.1f} s'} (lease {LEASE_MS / 1000:.0f} s)"
    )

    # The rest of the shard drained while the victim was frozen, within one lease of the freeze.
    assert rest_written == len(rest)
    assert rest_done_s is not None and rest_done_s < LEASE_MS / 1000
    # And the frozen round itself: Postgres ended the frozen session (its rows rolled back, its locks freed)
    # before the leases expired, so the reclaim wrote them while the victim was still frozen.
    assert round_written == ROUND

    # Then SIGCONT: every answered run has one row, and the victim acked nothing that did not commit.
    cluster.drain_until(lambda: settled(buffer, snaps), shards=[0], timeout=60)
    wait_until(lambda: [r for r in cluster.drain_reports() if r["name"] == "victim"], timeout=30, what="the victim")
    assert_one_live_row_each(ids)
    assert {status for status, _ in entry_states(buffer, snaps).values()} == {"ACKED"}
    (woken,) = [r for r in cluster.drain_reports() if r["name"] == "victim"]
    assert woken["created"] == [] and not woken["retval"].get("created"), woken  # nothing of it committed
    created = Counter(run_id for r in cluster.drain_reports() for run_id in r["created"])
    assert created == Counter(ids)  # every row written once, all by the rescuer
