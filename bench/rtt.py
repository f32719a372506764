"""What round trips cost: the trigger path and a drain round with Redis and Postgres 0, 0.5 and 2 ms away.

    python scripts/hosts.py run -- python -m bench.rtt [--triggers 300] [--runs 4000] [--rtts 0,0.5,2] [--repeat 3]

(``make bench-rtt``.) Every Redis and Postgres connection of this process goes through scripts/netproxy.py,
whose ``rtt_ms`` is set per measurement; on the hosts of scripts/hosts.py the proxy listens on the bridge and
forwards to the Redis and Postgres hosts, elsewhere it forwards to ``REDIS_URL``/``DATABASE_URL`` on loopback.
Per RTT, interleaved ``--repeat`` times (drift hits all alike), medians reported:

- ``ping``: the round trip actually paid (a Redis PING through the proxy; includes the proxy's own cost);
- ``trigger``: ``--triggers`` buffered triggers one after another through the whole Django stack (the
  view, auth, gate, accept; the SDK's headers and a request key each), median latency;
- ``drain``: ``--runs`` parked entries drained by ``drainer.tasks.drain_shard`` called in this process, as a
  worker runs it (lease, write, commit, ack), rows per second.

Round trips are counted by the proxy (client chunks carried upstream: a pipeline is one) and shown per
trigger and per drain round. Ratios are against the 0 ms row of the same run. Runs against
``<DATABASE_URL database>_bench`` with a key prefix of its own, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import urllib.parse
import uuid
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._django import setup_django
from scripts.netproxy import NetProxy

SDK_HEADERS: dict[str, Any] = {
    "HTTP_TRIGGER_VERSION": "4.8.3",
    "HTTP_X_TRIGGER_API_VERSION": "2025-07-16",
    "HTTP_X_TRIGGER_SOURCE": "sdk",
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--triggers", type=int, default=300, help="sequential triggers per measurement")
    parser.add_argument("--runs", type=int, default=4000, help="parked entries drained per measurement")
    parser.add_argument(
        "--rtts", default="0,0.5,2", help="round-trip times in ms, comma-separated; the first is the base"
    )
    parser.add_argument("--repeat", type=int, default=3, help="measurements per RTT; medians are reported")
    parser.add_argument("--database", default=None, help="database name (default: DATABASE_URL's + _bench)")
    return parser.parse_args(argv)


def _through(url: str, host: str, port: int) -> str:
    parts = urllib.parse.urlsplit(url)
    auth = parts.netloc.rpartition("@")[0]
    return parts._replace(netloc=f"{auth}@{host}:{port}" if auth else f"{host}:{port}").geturl()


def proxied(proxy: NetProxy) -> None:
    """Point REDIS_URL and DATABASE_URL of this process at proxy links, before Django reads them."""
    topology = os.environ.get("HOSTS_TOPOLOGY")
    listen = json.loads(topology)["gateway"] if topology else "127.0.0.1"
    for var, name, default_port in (("REDIS_URL", "redis", 6379), ("DATABASE_URL", "postgres", 5432)):
        url = os.environ[var]
        parts = urllib.parse.urlsplit(url)
        port = proxy.add(name, listen, (parts.hostname or "127.0.0.1", parts.port or default_port))
        os.environ[var] = _through(url, listen, port)
    os.environ.pop("BUFFER_REDIS_URL", None)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rtts = [float(x) for x in args.rtts.split(",")]
    prefix = f"mbench-rtt-{uuid.uuid4().hex[:8]}"
    os.environ.setdefault("LOG_LEVEL", "WARNING")  # the drain logs every round at INFO
    os.environ.update(
        MOLLIFIER_ENABLED="true", MOLLIFIER_TRIP_THRESHOLD="0", MOLLIFIER_DRAINER_ENABLED="true",
        MOLLIFIER_KEY_PREFIX=prefix, MOLLIFIER_SHARDS="1", MOLLIFIER_MAX_BUFFERED_PER_ENV=str(10**9),
    )  # fmt: skip
    with NetProxy() as proxy:
        proxied(proxy)
        setup_django(database=args.database)
        return measure(proxy, args, rtts, prefix)


def measure(proxy: NetProxy, args: argparse.Namespace, rtts: list[float], prefix: str) -> int:
    import redis
    from django.conf import settings
    from django.db import connection
    from django.test import Client

    from bench._drainer import delete_prefix, fill, small_snapshots, truncate_runs
    from buffer.buffer import Buffer
    from drainer.tasks import drain_shard
    from mollifier_project.clock import now_ms
    from runs.tenants import ensure_tenant, issue_api_key

    tenant = ensure_tenant("bench-rtt", "prod", enrol=True)
    secret = issue_api_key(tenant.env)[1]
    client = Client(HTTP_AUTHORIZATION=f"Bearer {secret}", **SDK_HEADERS)
    buffer = Buffer.from_settings()
    ping_client = redis.Redis.from_url(settings.REDIS_URL)

    def flights() -> tuple[int, int]:
        return proxy.stats("redis")["flights"], proxy.stats("postgres")["flights"]

    def one(rtt: float) -> dict[str, float]:
        proxy.set("redis", rtt_ms=rtt)
        proxy.set("postgres", rtt_ms=rtt)
        pings = []
        for _ in range(50):
            started = time.perf_counter()
            ping_client.ping()
            pings.append(time.perf_counter() - started)
        connection.ensure_connection()
        latencies = []
        before = flights()
        for i in range(args.triggers):
            body = json.dumps({"payload": json.dumps({"json": {"i": i}}), "options": {"tags": ["rtt"]}})
            started = time.perf_counter()
            response = client.post(
                "/api/v1/tasks/rtt-task/trigger", body, content_type="application/json",
                HTTP_X_TRIGGER_REQUEST_IDEMPOTENCY_KEY=str(uuid.uuid4()),
            )  # fmt: skip
            latencies.append(time.perf_counter() - started)
            assert response.status_code == 200, response.content[:300]
        after = flights()
        trigger_redis, trigger_pg = ((a - b) / args.triggers for a, b in zip(after, before, strict=True))
        while drain_shard(0) and any(buffer.shard_has_work()):  # the triggers' own entries: not timed
            pass
        truncate_runs()
        fill(buffer, small_snapshots(tenant.env, args.runs, now_ms=now_ms()), now_ms=now_ms())
        before = flights()
        started = time.perf_counter()
        rounds = 0
        while any(buffer.shard_has_work()):
            report = drain_shard(0) or {}
            rounds += int(report.get("rounds", 0))  # type: ignore[call-overload]
        drain_s = time.perf_counter() - started
        after = flights()
        rounds = max(rounds, 1)
        drain_redis, drain_pg = ((a - b) / rounds for a, b in zip(after, before, strict=True))
        truncate_runs()
        return {
            "ping_ms": statistics.median(pings) * 1000, "trigger_ms": statistics.median(latencies) * 1000,
            "trigger_redis": trigger_redis, "trigger_pg": trigger_pg, "drain_rows_s": args.runs / drain_s,
            "round_redis": drain_redis, "round_pg": drain_pg, "rows_per_round": args.runs / rounds,
        }  # fmt: skip

    results: dict[float, list[dict[str, float]]] = defaultdict(list)
    try:
        truncate_runs()
        for _ in range(args.repeat):
            for rtt in rtts:
                results[rtt].append(one(rtt))
    finally:
        ping_client.close()
        delete_prefix(redis.Redis.from_url(settings.REDIS_URL), prefix)

    med = {rtt: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for rtt, rs in results.items()}
    base = med[rtts[0]]
    print(f"\nbench.rtt: {args.triggers} sequential triggers and a drain of {args.runs} entries per measurement, "
          f"medians of {args.repeat}; round trips = client chunks the proxy carried")  # fmt: skip
    print("| RTT set | PING paid | trigger p50 | vs base | Redis/PG round trips per trigger | drain rows/s | vs base "
          "| Redis/PG round trips per round (rows/round) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for rtt in rtts:
        m = med[rtt]
        print(
            f"| {rtt:g} ms | {m['ping_ms']:.2f} ms | {m['trigger_ms']:.2f} ms | {m['trigger_ms'] / base['trigger_ms']:.2f}× "
            f"| {m['trigger_redis']:.1f} / {m['trigger_pg']:.1f} | {m['drain_rows_s']:,.0f} "
            f"| {m['drain_rows_s'] / base['drain_rows_s']:.2f}× | {m['round_redis']:.1f} / {m['round_pg']:.1f} "
            f"({m['rows_per_round']:.0f}) |"
        )
    last = med[rtts[-1]]
    print(f"rtt_trigger_ratio={last['trigger_ms'] / base['trigger_ms']:.2f} "
          f"rtt_drain_ratio={last['drain_rows_s'] / base['drain_rows_s']:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
