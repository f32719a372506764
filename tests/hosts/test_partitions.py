"""Partitions across hosts (docs/operations.md#what-each-failure-costs; the drain's cases in drainer/drain.py):
a drain worker cut off from Redis for longer than its lease mid-round, a drain worker cut off from Postgres
right after it sent COMMIT, the web cut off from Redis mid-storm. Every link is 1 ms of round trip; a cut
is scripts/netproxy.py holding the link's bytes (no RST, no FIN: each side waits for its own timeout)
until the heal delivers them, as TCP's retransmissions would. Nothing lost, nothing doubled.

The drain workers take ticks from private queues ("q-drain1", "q-drain2") so the test decides which one
drains when: drain1 first, drain2 while drain1 is cut off.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from django.db import connection

from mollifier_project.clock import now_ms as wall_clock_ms
from runs import mutations
from runs.auth import EnvContext
from runs.models import AmbiguousAttempt, RequestKey, RunStatus, TaskRun
from runs.tenants import ensure_tenant, issue_api_key
from tests.chaos.storm import Storm, dead_letters, envs_over_shards, in_flight, rows_of_envs
from tests.drainer.processes import wait_until
from tests.hosts.harness import HostGunicorn

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

RTT_MS = 1.0
LEASE_S = 2.5  # HOST_SETTINGS["LEASE_MS"] (tests/hosts/conftest.py)
CUT_S = LEASE_S + 2.5  # longer than a lease: another worker must have taken the entries over meanwhile


def tick_until(cluster, done, *, queues: list[str], timeout: float, every: float = 0.5) -> None:
    """A drain tick for shard 0 on each of ``queues`` every ``every`` s (expiring like beat's) until ``done()``."""
    deadline = time.monotonic() + timeout
    next_tick = 0.0
    while not done():
        now = time.monotonic()
        assert now < deadline, f"not done after {timeout} s; reports: {cluster.drain_reports()}"
        if now >= next_tick:
            for queue in queues:
                cluster.send_drain(0, expires=2 * every, queue=queue)
            next_tick = now + every
        time.sleep(0.05)


def drained(buffer, envs, total: int):
    return lambda: rows_of_envs(envs) == total and not any(buffer.shard_has_work()) and in_flight(buffer) == 0


def assert_exactly_once(cluster, envs, ids: list[str]) -> Counter:
    """Every id one row, no other row in these envs, no row written by two drains; returns the reports' sums."""
    assert set(TaskRun.objects.filter(env_id__in=[e.id for e in envs]).values_list("id", flat=True)) == set(ids)
    created = Counter(run_id for report in cluster.drain_reports() for run_id in report["created"])
    assert not [run_id for run_id, n in created.items() if n > 1]  # 0 doubled
    sums: Counter = Counter()
    for report in cluster.drain_reports():
        retval = report["retval"] if isinstance(report["retval"], dict) else {}
        sums.update({k: v for k, v in retval.items() if isinstance(v, int) and not isinstance(v, bool)})
    return sums


def context(env) -> EnvContext:
    return EnvContext(
        env_id=env.id, org_id=env.org_id, env_slug=env.slug, env_type=env.type, org_slug=env.org.slug, enrolled=True
    )


def _env(envs, snapshot):
    return next(e for e in envs if e.id == snapshot.env_id)


class Mutator(threading.Thread):
    """Cancels and tag additions through ``runs.mutations`` (what the API's endpoints call), each retried on
    BUSY (the API's 503 while the run is leased and its row has not appeared) as a client would."""

    def __init__(self, buffer, jobs: list[tuple[str, object, str]]) -> None:
        super().__init__(daemon=True)
        self.buffer, self.jobs = buffer, jobs
        self.outcomes: Counter = Counter()
        self.busy = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for kind, env, run_id in self.jobs:
                for _ in range(200):
                    now, wait = wall_clock_ms(), 500
                    if kind == "cancel":
                        result = mutations.cancel(context(env), run_id, buffer=self.buffer, now_ms=now, wait_ms=wait)
                    else:
                        result = mutations.add_tags(
                            context(env), run_id, ["meanwhile"], buffer=self.buffer, now_ms=now, wait_ms=wait
                        )
                    if result.status is not mutations.Status.BUSY:
                        break
                    self.busy += 1
                    time.sleep(0.05)
                self.outcomes[(kind, result.status.value)] += 1
        except BaseException as exc:  # reported in the test's thread
            self.error = exc
        finally:
            connection.close()

    def finish(self) -> Counter:
        self.join(120)
        if self.error is not None:
            raise self.error
        return self.outcomes


def test_drain_worker_cut_off_from_redis_longer_than_its_lease_mid_round(start_cluster, links):
    cluster, buffer = start_cluster(RTT_MS, ROUND_BUDGET=100)
    envs = envs_over_shards(1, orgs_per_shard=2)
    storm = Storm(buffer, envs)
    ids = storm.accept(3000)
    drain1 = cluster.start_worker("drain1", queues="q-drain1")
    drain2 = cluster.start_worker("drain2", queues="q-drain2")
    cluster.wait_ready(drain1, drain2, timeout=60)

    # The cut comes as drain1 sends its first ack: the round's rows are committed, the ack is held (and
    # delivered at the heal, long after the lease), and drain1 waits on Redis.
    links.proxy.cut_before("drain1-redis", buffer._scripts.ack.sha.encode())
    cluster.send_drain(0, queue="q-drain1")
    wait_until(lambda: links.proxy.stats("drain1-redis")["cuts_fired"], timeout=30, what="drain1's first ack")
    cut_at, cut_wall = time.monotonic(), time.time()
    rows_at_cut = rows_of_envs(envs)
    leased_at_cut = in_flight(buffer)
    held = [i.decode() if isinstance(i, bytes) else i for i in buffer._client.zrange(buffer.keys(0).leases, 0, -1)]
    by_id = {s.id: s for s in storm.made}
    # Meanwhile: cancel and tag runs that drain1 holds and runs still queued.
    queued = [s for s in storm.made[-600:] if s.id not in set(held)]
    leased = [by_id[i] for i in held[:40]]
    jobs = [("cancel", s) for s in leased[:20] + queued[:20]] + [("tag", s) for s in leased[20:40] + queued[20:40]]
    random.shuffle(jobs)
    mutator = Mutator(buffer, [(kind, _env(envs, s), s.id) for kind, s in jobs])
    mutator.start()
    # drain2 takes over once the shard lock and then drain1's leases expire.
    tick_until(cluster, lambda: time.monotonic() - cut_at >= CUT_S, queues=["q-drain2"], timeout=CUT_S + 5)
    rows_at_heal = rows_of_envs(envs)
    links.proxy.heal("drain1-redis")
    tick_until(cluster, drained(buffer, envs, len(ids)), queues=["q-drain1", "q-drain2"], timeout=90)
    outcomes = mutator.finish()

    sums = assert_exactly_once(cluster, envs, ids)
    rows = dict(TaskRun.objects.filter(id__in=[s.id for _, s in jobs]).values_list("id", "status"))
    tags = dict(TaskRun.objects.filter(id__in=[s.id for _, s in jobs]).values_list("id", "tags"))
    drain1_after = [r for r in cluster.drain_reports() if r["name"] == "drain1" and r["ended"] > cut_wall]
    print(
        f"\nhosts: drain1 cut from Redis for {CUT_S} s (lease {LEASE_S} s) with {leased_at_cut} entries leased and "
        f"{rows_at_cut} rows written; drain2 wrote the rows from {rows_at_cut} to {rows_at_heal} meanwhile; "
        f"drains' sums {dict(sums)}; mutations {dict(outcomes)} after {mutator.busy} BUSY retries; drain1's tasks "
        f"from the cut on ended with {[r['retval'] for r in drain1_after]}"
    )
    assert leased_at_cut > 0 and rows_at_cut > 0  # mid-round: rows committed, their leases held, no ack
    assert rows_at_heal > rows_at_cut  # drain2 took over during the partition
    assert outcomes == {("cancel", "ok"): 40, ("tag", "ok"): 40}
    assert all(rows[s.id] == RunStatus.CANCELED for kind, s in jobs if kind == "cancel")
    assert all("meanwhile" in tags[s.id] for kind, s in jobs if kind == "tag")
    assert dead_letters(buffer) == 0


def test_drain_worker_cut_off_from_postgres_right_after_its_commit_was_sent(start_cluster, links):
    cluster, buffer = start_cluster(RTT_MS, ROUND_BUDGET=200)
    envs = envs_over_shards(1, orgs_per_shard=2)
    storm = Storm(buffer, envs)
    ids = storm.accept(1500)
    drain1 = cluster.start_worker("drain1", queues="q-drain1")
    drain2 = cluster.start_worker("drain2", queues="q-drain2")
    cluster.wait_ready(drain1, drain2, timeout=60)

    # The first COMMIT drain1 sends goes through to Postgres; then its link carries nothing more, so the
    # round's rows are committed and drain1 never hears so: an ambiguous commit.
    links.proxy.cut_after("drain1-postgres", b"COMMIT")
    cluster.send_drain(0, queue="q-drain1")
    wait_until(lambda: links.proxy.stats("drain1-postgres")["cuts_fired"], timeout=30, what="drain1's COMMIT")
    cut_at = time.monotonic()
    wait_until(lambda: rows_of_envs(envs) > 0, timeout=10, what="the committed round to be visible")
    rows_at_cut = rows_of_envs(envs)
    leased_at_cut = in_flight(buffer)
    tick_until(cluster, lambda: time.monotonic() - cut_at >= CUT_S, queues=["q-drain2"], timeout=CUT_S + 5)
    rows_at_heal = rows_of_envs(envs)
    links.proxy.heal("drain1-postgres")
    tick_until(cluster, drained(buffer, envs, len(ids)), queues=["q-drain1", "q-drain2"], timeout=90)

    sums = assert_exactly_once(cluster, envs, ids)
    print(
        f"\nhosts: drain1 cut from Postgres right after its COMMIT for {CUT_S} s: {rows_at_cut} rows committed, "
        f"{leased_at_cut} entries leased unacked; drain2 went on to {rows_at_heal} rows meanwhile; drains' sums "
        f"{dict(sums)}"
    )
    assert rows_at_cut > 0 and leased_at_cut >= rows_at_cut  # committed, not acked
    assert rows_at_heal > rows_at_cut  # drain2 took over during the partition
    assert dead_letters(buffer) == 0


STORM_CONNECTIONS = 6


class HttpStorm(threading.Thread):
    """Triggers over keep-alive connections until ``stop``, each with a request key (as the SDK sends), a 503
    retried with the same key (as the SDK does, ``x-should-retry``); ``answers`` holds each trigger's final
    (status, body)."""

    def __init__(self, url: str, secret: str) -> None:
        super().__init__(daemon=True)
        parts = url.removeprefix("http://").split(":")
        self.host, self.port, self.secret = parts[0], int(parts[1]), secret
        self.answers: list[tuple[int, dict]] = []
        self.retried: Counter[int] = Counter()
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def _connection_worker(self, n: int) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        i = 0
        while not self._halt.is_set():
            i += 1
            body = json.dumps({"payload": json.dumps({"json": {"c": n, "i": i}}), "options": {"tags": ["storm"]}})
            headers = {"Authorization": f"Bearer {self.secret}", "Content-Type": "application/json",
                       "x-trigger-request-idempotency-key": str(uuid.uuid4())}  # fmt: skip
            for _ in range(100):
                conn.request("POST", "/api/v1/tasks/hosts-web/trigger", body=body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
                if response.status != 503:
                    break
                with self._lock:
                    self.retried[response.status] += 1
                time.sleep(0.05)
            with self._lock:
                self.answers.append((response.status, json.loads(payload)))
        conn.close()

    def run(self) -> None:
        threads = [threading.Thread(target=self._connection_worker, args=(n,)) for n in range(STORM_CONNECTIONS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def stop(self) -> None:
        self._halt.set()
        self.join(60)


def duplicates_acked(log_dir: Path) -> int:
    """Entries the drain acked without a row as duplicates of a fail-open retry (its log lines)."""
    return sum(path.read_text(errors="replace").count("is a duplicate of run") for path in log_dir.glob("*.log"))


def test_web_cut_off_from_redis_mid_storm_fails_open_and_loses_nothing(start_cluster, links, tmp_path):
    cluster, buffer = start_cluster(RTT_MS)
    tenant = ensure_tenant("hosts-web", "prod", enrol=True)
    secret = issue_api_key(tenant.env)[1]
    web = HostGunicorn(
        links, {**cluster.mollifier_env(), "MOLLIFIER_ENABLED": "true", "MOLLIFIER_TRIP_THRESHOLD": "0"},
        log=tmp_path / "web.log",
    )  # fmt: skip
    storm = HttpStorm(web.url, secret)
    try:
        drain1 = cluster.start_worker("drain1", queues="q-drain1")
        cluster.wait_ready(drain1, timeout=60)
        storm.start()
        time.sleep(2)
        before_cut = len(storm.answers)
        links.proxy.cut("web-redis")
        time.sleep(3)
        links.proxy.heal("web-redis")
        during_cut = len(storm.answers) - before_cut
        time.sleep(2)
        storm.stop()
    finally:
        web.stop()
    answered = [body["id"] for status, body in storm.answers if status == 200]
    tick_until(
        cluster, lambda: not any(buffer.shard_has_work()) and in_flight(buffer) == 0, queues=["q-drain1"], timeout=60
    )
    rows = TaskRun.objects.filter(env=tenant.env)
    direct = rows.filter(buffered=False).count()
    # A trigger whose script ran in Redis just before the cut, its reply lost, is retried by the SDK with the same
    # request key, and that retry fails open after the fence: the web noted the attempt as ambiguous in Postgres,
    # so the retry answers it if drained, else supersedes it and the drain drops it (docs/architecture.md#request-
    # keys-across-an-outage). Payloads are unique per trigger: rows sharing one would be a doubled run.
    by_payload: dict[str | None, list[str]] = {}
    for run_id, payload in rows.values_list("id", "payload"):
        by_payload.setdefault(payload, []).append(run_id)
    doubled = {p: runs for p, runs in by_payload.items() if len(runs) > 1}
    keys = RequestKey.objects.filter(env=tenant.env)
    ambiguous = AmbiguousAttempt.objects.filter(env=tenant.env)
    print(
        f"\nhosts: web cut from Redis for 3 s mid-storm: {len(storm.answers)} triggers, {during_cut} answered during "
        f"the cut; answers {dict(Counter(s for s, _ in storm.answers))} after 503 retries {dict(storm.retried)}; "
        f"rows {rows.count()}: {direct} written directly (fail open), {rows.count() - direct} through the buffer; "
        f"request keys in Postgres {keys.count()} ({keys.filter(restored=False).count()} not back in Redis); "
        f"ambiguous attempts noted {ambiguous.count()} ({ambiguous.exclude(superseded_by=None).count()} superseded); "
        f"drained duplicates acked without a row {duplicates_acked(tmp_path)}; "
        f"doubled runs {len(doubled)}"
    )
    assert Counter(status for status, _ in storm.answers) == {200: len(storm.answers)}
    assert len(answered) == len(set(answered))  # every answer a distinct run
    assert set(answered) <= set(rows.values_list("id", flat=True))  # nothing lost
    assert direct > 0 and rows.count() - direct > 0  # it failed open during the cut, and buffered otherwise
    assert during_cut > 0  # the web kept answering while cut off
    assert len(by_payload) == len(storm.answers)  # no row of a trigger nobody sent
    assert doubled == {}  # before ambiguous attempts were noted (main): 0–2 such pairs per run (6 runs)
