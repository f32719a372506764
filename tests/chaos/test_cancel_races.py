"""Chaos: 1,000 cancels racing a real drain (docs/architecture.md#race-analysis "cancel during the drain",
#reads-and-mutations-of-buffered-runs, #guarantees 3: cancel wins).

1,000 runs are parked (pipelined, bench/_drainer.py ``fill``) over ``ENVS`` envs of one shard; a solo worker
and beat drain them in small rounds (``ROUND_BUDGET``) so the drain lasts about as long as the cancels.
Once the first rows exist, ``THREADS`` threads call ``runs.mutations.cancel`` — what the HTTP cancel
endpoint calls — for every run, in random order. A cancel answered BUSY (the API's 503 with
``x-should-retry``: the entry was leased and its row did not appear within MUTATE_WAIT_MS) is retried, as
the client would. Each cancel lands wherever the run is at that moment:

- in the buffer before its lease: the drain writes a CANCELED row straight from the snapshot;
- in the buffer while leased: the flag rides on the entry, the row is written live and then cancelled
  (ack reports the flag; the API waited for the row and cancelled it too);
- on the row: ``engine.cancel_run``.

Then every run is exactly one CANCELED row: none live, none failed, none missing. The split is printed:
entries carrying the flag were cancelled in the buffer; the drain's own count of CANCELED rows says how
many of those were before the lease.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

import pytest
from django.conf import settings
from django.db import connection

from mollifier_project.clock import now_ms as wall_clock_ms
from runs import mutations
from runs.auth import EnvContext
from runs.models import RunStatus, TaskRun
from tests.chaos.storm import (
    Storm,
    assert_buffer_consistent,
    dead_letters,
    entry_fields,
    envs_over_shards,
    rows_of_envs,
)
from tests.drainer.processes import wait_until
from tests.drainer.test_processes import settled

RUNS = 1_000
ENVS = 4
THREADS = 8
ROUND_BUDGET = 20
MAX_TRIES = 20


def context(env) -> EnvContext:
    return EnvContext(
        env_id=env.id, org_id=env.org_id, env_slug=env.slug, env_type=env.type, org_slug=env.org.slug, enrolled=True
    )


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_thousand_cancels_racing_the_drain_all_end_canceled(start_cluster):
    started = time.monotonic()
    cluster, buffer = start_cluster(SHARDS=1, DRAIN_INTERVAL_S=0.5, ROUND_BUDGET=ROUND_BUDGET)
    wait_ms = settings.MOLLIFIER.MUTATE_WAIT_MS  # as the API passes it (the worker has the same settings)
    envs = envs_over_shards(1, orgs_per_shard=ENVS)
    contexts = {env.id: context(env) for env in envs}
    storm = Storm(buffer, envs)
    ids = storm.accept(RUNS)
    worker, beat = cluster.start_worker("w1"), cluster.start_beat()
    cluster.wait_ready(worker, beat)

    order = list(storm.made)
    random.shuffle(order)
    outcomes: Counter = Counter()
    busy = Counter()  # run id → BUSY answers before OK
    errors: list[BaseException] = []
    lock = threading.Lock()

    def cancel_all(part) -> None:
        try:
            for s in part:
                for _ in range(MAX_TRIES):
                    result = mutations.cancel(
                        contexts[s.env_id], s.id, buffer=buffer, now_ms=wall_clock_ms(), wait_ms=wait_ms
                    )
                    if result.status is not mutations.Status.BUSY:
                        break
                    with lock:
                        busy[s.id] += 1
                with lock:
                    outcomes[result.status.value] += 1
        except BaseException as exc:  # reported in the test's thread
            errors.append(exc)
        finally:
            connection.close()  # this thread's own Postgres session

    wait_until(lambda: rows_of_envs(envs) > 0, timeout=30, interval=0.005, what="the drain to start")
    rows_when_cancels_began = rows_of_envs(envs)
    cancels_began = time.monotonic()
    threads = [threading.Thread(target=cancel_all, args=(order[i::THREADS],)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    cancels_s = time.monotonic() - cancels_began
    rows_when_cancels_ended = rows_of_envs(envs)
    assert not errors, errors
    wait_until(lambda: settled(buffer, storm.made), timeout=30, interval=0.1, what="every entry to be acked or dead")
    drained_s = time.monotonic() - started

    flagged = sum(1 for (at,) in entry_fields(buffer, storm.made, "cancelled_at") if at)
    reports = [r["retval"] for r in cluster.drain_reports() if r["retval"] and not r["retval"].get("locked")]
    straight = sum(r.get("cancelled", 0) for r in reports)
    rows = TaskRun.objects.filter(env_id__in=list(contexts))
    statuses = Counter(rows.values_list("status", flat=True))
    dead = dead_letters(buffer)
    assert_buffer_consistent(buffer, cluster, beat)
    print(
        f"\nchaos: cancel vs drain: {RUNS} buffered runs over {ENVS} envs, rounds of {ROUND_BUDGET}; {RUNS} cancels"
        f" from {THREADS} threads in {cancels_s:.2f} s while the drain went from {rows_when_cancels_began} to"
        f" {rows_when_cancels_ended} rows; answers {dict(outcomes)} after {sum(busy.values())} BUSY (503) retries"
        f" of {len(busy)} runs; cancelled in the buffer {flagged} ({straight} before the lease: CANCELED row from the"
        f" snapshot; {flagged - straight} flagged while leased: live row, then cancelled), on the row"
        f" {RUNS - flagged}; rows {dict(statuses)}, {dead} dead letters; {drained_s:.1f} s in all"
    )

    assert outcomes == {"ok": RUNS}  # every cancel answered OK (after its 503 retries)
    assert rows.count() == RUNS and set(rows.values_list("id", flat=True)) == set(ids)
    assert statuses == {RunStatus.CANCELED: RUNS}  # cancel won every race: none live, none failed
    assert dead == 0
    # The races happened (the test is not vacuous): cancels met both buffered entries and rows.
    assert flagged > 0 and RUNS - flagged > 0
