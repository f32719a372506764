"""What one stale-sweep pass costs: wall time and Redis commands, on a wide buffer with a few stale entries.

    python bench/sweep.py [--orgs 10000] [--envs 5] [--entries 2] [--stale-envs 20] [--shards 16]
                          [--max-orgs 100] [--max-entries 1000]

Fills a fresh key prefix with ``--orgs`` × ``--envs`` env queues of ``--entries`` fresh entries each, plus
three stale entries at the head of ``--stale-envs`` random envs, then sweeps every shard for one full cycle
(``sweep.sweep_shard`` with the default caps: 100 orgs a pass, 1000 entries an env) and reports, per pass,
the wall time and the Redis commands the client sent (counted on the connection: a pipeline of n commands
is n commands and one round trip; commands a Lua script runs inside Redis are not counted). It checks that
the cycle found exactly the planted stale entries and that the gauge shows them.

It then times the scrape-time gauges (``Buffer.shard_stats``, every shard, ``--scrapes`` times, median)
against a baseline in the same run: the same numbers computed the way they were before the shard counters
(``RECOUNT_LUA``: walk every org and env of a shard, LLEN and head of each queue — O(envs)), and checks that
both give the same depth and oldest age.

The last line is machine-readable: ``pass_s=<median pass seconds> redis_calls=<median commands per pass>
scrape_ms=<median> recount_ms=<median>``.
Postgres (``StuckEntry`` rows) is ``<DATABASE_URL database>_bench``; the Redis keys are deleted at the end.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._django import setup_django

STALE_PER_ENV = 3
THRESHOLD_MS = 300_000

# The baseline: a shard's queued total and oldest queue head found by walking every org and env, as the
# gauges were computed before the scripts kept shard counters (KEYS[1] orgs, ARGV[1] shard base).
RECOUNT_LUA = """
local base, queued, oldest = ARGV[1], 0, -1
for _, org in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  for _, env in ipairs(redis.call('SMEMBERS', base .. 'org:' .. org .. ':envs')) do
    local queue = base .. 'q:' .. env
    queued = queued + redis.call('LLEN', queue)
    local head = redis.call('LINDEX', queue, 0)
    if head then
      local accepted = tonumber(redis.call('HGET', base .. 'e:' .. head, 'accepted_ms'))
      if accepted and (oldest < 0 or accepted < oldest) then oldest = accepted end
    end
  end
end
return {queued, oldest}
"""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orgs", type=int, default=10_000)
    parser.add_argument("--envs", type=int, default=5, help="envs per org")
    parser.add_argument("--entries", type=int, default=2, help="fresh entries per env")
    parser.add_argument("--stale-envs", type=int, default=20, help=f"envs that get {STALE_PER_ENV} stale entries")
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--max-orgs", type=int, default=100, help="SWEEP_MAX_ORGS_PER_PASS")
    parser.add_argument("--max-entries", type=int, default=1000, help="SWEEP_MAX_ENTRIES_PER_ENV")
    parser.add_argument("--database", default=None, help="database name (default: DATABASE_URL's + _bench)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--scrapes", type=int, default=15, help="timed scrapes of each kind (median)")
    args = parser.parse_args(argv)
    for name in ("orgs", "envs", "entries", "shards", "max_orgs", "max_entries"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= args.stale_envs <= args.orgs * args.envs:
        parser.error("--stale-envs must be between 0 and orgs × envs")
    return args


def counting_client(url: str):
    """A str-decoding client whose connections count the commands and round trips they send."""
    import redis
    from redis.connection import Connection

    from buffer.client import CLIENT_OPTIONS

    class CountingConnection(Connection):
        commands = 0
        round_trips = 0

        def send_packed_command(self, command, check_health=True):
            CountingConnection.round_trips += 1
            return super().send_packed_command(command, check_health)

        def send_command(self, *args, **kwargs):
            CountingConnection.commands += 1
            return super().send_command(*args, **kwargs)

        def pack_commands(self, commands):
            commands = list(commands)
            CountingConnection.commands += len(commands)
            return super().pack_commands(commands)

    kwargs = redis.connection.parse_url(url)
    pool = redis.ConnectionPool(connection_class=CountingConnection, **CLIENT_OPTIONS, **kwargs)
    return redis.Redis(connection_pool=pool), CountingConnection


def fill(buffer, args: argparse.Namespace, now_ms: int) -> set[str]:
    """Accept every entry through the real accept script, pipelined; returns the stale run ids."""
    from runs.ids import new_run_id

    rng = random.Random(args.seed)
    envs = [(org, org * 10 + e) for org in range(1, args.orgs + 1) for e in range(args.envs)]
    stale_envs = set(rng.sample(envs, args.stale_envs))
    stale_ids: set[str] = set()
    pipe = buffer._client.pipeline(transaction=False)
    pending = 0
    for org, env in envs:
        k = buffer.keys_for_org(org)
        plan = [(now_ms - THRESHOLD_MS - 60_000, True)] * (STALE_PER_ENV if (org, env) in stale_envs else 0)
        plan += [(now_ms - 1_000, False)] * args.entries
        for accepted_ms, stale in plan:
            run_id = new_run_id()
            if stale:
                stale_ids.add(run_id)
            buffer._scripts.accept(
                keys=[k.entry(run_id), k.queue(env), k.org_envs(org), k.orgs],
                args=[run_id, env, org, f'{{"id":"{run_id}"}}', accepted_ms, 1_000_000, "", k.base, accepted_ms],
                client=pipe,
            )
            pending += 1
        if pending >= 5_000:
            pipe.execute()
            pending = 0
    pipe.execute()
    return stale_ids


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_django(database=args.database)
    from django.conf import settings

    from buffer.buffer import Buffer
    from sweep import sweep
    from sweep.models import StuckEntry

    client, counter = counting_client(settings.REDIS_URL)
    prefix = f"bench-sweep-{uuid.uuid4().hex[:8]}"
    buffer = Buffer(client, prefix=prefix, shards=args.shards)
    StuckEntry.objects.all().delete()
    now_ms = time.time_ns() // 1_000_000
    try:
        started = time.perf_counter()
        stale_ids = fill(buffer, args, now_ms)
        entries = args.orgs * args.envs * args.entries + len(stale_ids)
        print(f"filled {args.orgs} orgs × {args.envs} envs, {entries} entries ({len(stale_ids)} stale) "
              f"over {args.shards} shards in {time.perf_counter() - started:.1f} s")  # fmt: skip

        client.ping()  # connect before counting
        times: list[float] = []
        calls: list[int] = []
        trips: list[int] = []
        found: set[str] = set()
        limits = sweep.SweepLimits(older_than_ms=THRESHOLD_MS, max_orgs=args.max_orgs, max_entries=args.max_entries)
        cycle_started = time.perf_counter()
        for shard in range(args.shards):
            while True:
                before = (counter.commands, counter.round_trips)
                t0 = time.perf_counter()
                report = sweep.sweep_shard(buffer, shard=shard, now_ms=now_ms, limits=limits)
                times.append(time.perf_counter() - t0)
                calls.append(counter.commands - before[0])
                trips.append(counter.round_trips - before[1])
                found.update(s.run_id for s in report.stale)
                if report.wrapped:
                    break
        cycle_s = time.perf_counter() - cycle_started

        stale_gauge = sum(s.stale for s in buffer.shard_stats(now_ms=now_ms))
        scrape_before = counter.commands
        buffer.shard_stats(now_ms=now_ms)
        scrape_calls = counter.commands - scrape_before
        recount = client.register_script(RECOUNT_LUA)
        shard_keys = [buffer.keys(shard) for shard in range(args.shards)]

        def recount_all() -> list:
            pipe = client.pipeline(transaction=False)
            for k in shard_keys:
                recount(keys=[k.orgs], args=[k.base], client=pipe)
            return pipe.execute()

        scrape_times, recount_times = [], []
        for _ in range(args.scrapes):  # interleaved, so drift hits both alike
            t0 = time.perf_counter()
            gauges = buffer.shard_stats(now_ms=now_ms)
            scrape_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            walked = recount_all()
            recount_times.append(time.perf_counter() - t0)
        assert [(s.queued, s.oldest_accepted_ms or -1) for s in gauges] == [tuple(w) for w in walked], (
            "counters drifted"
        )
        scrape_ms, recount_ms = statistics.median(scrape_times) * 1000, statistics.median(recount_times) * 1000
        assert found == stale_ids, f"found {len(found)} stale entries, planted {len(stale_ids)}"
        assert stale_gauge == len(stale_ids), (stale_gauge, len(stale_ids))
        assert StuckEntry.objects.count() == len(stale_ids)

        p95 = statistics.quantiles(times, n=20)[-1] if len(times) >= 2 else times[0]
        print(f"full cycle: {len(times)} passes over {args.shards} shards in {cycle_s:.2f} s; "
              f"found all {len(found)} stale entries; gauge {stale_gauge}")  # fmt: skip
        print(f"per pass ({args.max_orgs} orgs max): median {statistics.median(times) * 1000:.1f} ms, "
              f"p95 {p95 * 1000:.1f} ms, max {max(times) * 1000:.1f} ms; "
              f"median {statistics.median(calls):.0f} Redis commands in {statistics.median(trips):.0f} round trips")  # fmt: skip
        envs = args.orgs * args.envs
        print(f"scrape-time gauges over {envs} envs, {args.shards} shards (median of {args.scrapes}):")
        print(f"  shard counters (shard_stats): {scrape_ms:8.1f} ms (min {min(scrape_times) * 1000:.1f}), "
              f"{scrape_calls} Redis commands (O(shards))")  # fmt: skip
        print(f"  walk every env (baseline):    {recount_ms:8.1f} ms (min {min(recount_times) * 1000:.1f}) (O(envs))")
        print(f"  ratio baseline/counters: {recount_ms / scrape_ms:.1f}x")
        print(f"pass_s={statistics.median(times):.4f} redis_calls={statistics.median(calls):.0f} "
              f"scrape_ms={scrape_ms:.2f} recount_ms={recount_ms:.2f}")  # fmt: skip
    finally:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=10_000))
        for i in range(0, len(keys), 10_000):
            client.delete(*keys[i : i + 10_000])
        StuckEntry.objects.all().delete()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
