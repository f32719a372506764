"""What the merged run list and a bulk cancel cost with an env of many buffered runs.

    python bench/bulk.py [--buffered 100000] [--storm-every 10] [--pages 20] [--baseline 1000]

Fills one env with ``--buffered`` entries through the real accept script (every ``--storm-every``-th of
task ``storm``, the rest ``other``) and a second env with ``--baseline`` entries, then measures:

1. the run list (``runs.listing.list_runs``): per page, over ``--pages`` pages, the wall time and the
   Redis commands and round trips the client sent (counted on the connection; commands a Lua script runs
   inside Redis are not counted) — unfiltered at page sizes 25 and 100, filtered to ``storm`` (1 in
   ``--storm-every``), and filtered to a task nothing has (the worst case, stopped by ``MAX_SCAN_CALLS``).
   The same pages over the ``--baseline`` env give the ratio: page cost does not grow with the env;
2. bulk cancels (``runs.bulk.execute``, in-process, as the Celery task runs it): by filter ``storm``, by the
   ids of 10,000 ``other`` runs, then by filter ``status=QUEUED`` over everything left — runs/s, chunks,
   Redis round trips, and the Postgres rows written (TaskRun rows, BulkAction writes). Baseline: the
   single-run cancel (``runs.mutations.cancel``, the ``runs.cancel`` path) over 1,000 runs of the baseline env;
3. the drain that follows: how long the CANCELED rows of the ``storm`` runs take to be written.

The last line is machine-readable: ``list_calls_per_page=… bulk_cancel_runs_per_s=… rows_written_by_cancel=…``.
Postgres is ``<DATABASE_URL database>_bench``; the Redis keys are deleted at the end.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._django import setup_django
from bench.sweep import counting_client


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--buffered", type=int, default=100_000)
    parser.add_argument("--storm-every", type=int, default=10, help="every n-th entry is of task storm")
    parser.add_argument("--pages", type=int, default=20, help="pages walked per list case")
    parser.add_argument("--baseline", type=int, default=1_000, help="entries of the baseline env")
    parser.add_argument("--by-ids", type=int, default=10_000, help="runs cancelled by id")
    parser.add_argument("--database", default=None, help="database name (default: DATABASE_URL's + _bench)")
    args = parser.parse_args(argv)
    if args.buffered < args.by_ids + args.buffered // args.storm_every or args.baseline < 1_000:
        parser.error("--buffered must hold the storm runs and --by-ids more; --baseline at least 1000")
    return args


def fill(buffer, env, count: int, *, storm_every: int, base_ms: int) -> tuple[list[str], list[str]]:
    """Accept ``count`` entries one by one (the real accept script); returns (storm ids, other ids)."""
    from mollifier_project.clock import from_ms
    from runs.ids import new_run_id
    from runs.snapshot import Snapshot, to_snapshot

    storm, other = [], []
    for i in range(count):
        run_id = new_run_id(base_ms + i)
        task = "storm" if i % storm_every == 0 else "other"
        s = Snapshot(id=run_id, env_id=env.id, org_id=env.org_id, task_identifier=task,
                     created_at=from_ms(base_ms + i), payload='{"json":{"n":1}}', payload_type="application/super+json",
                     tags=["bench"])  # fmt: skip
        buffer.accept(run_id=run_id, env_id=env.id, org_id=env.org_id, snapshot=to_snapshot(s), now_ms=base_ms + i,
                      idempotency=None, max_per_env=10_000_000)  # fmt: skip
        (storm if task == "storm" else other).append(run_id)
    return storm, other


def list_case(buffer, counter, ctx, params: dict[str, str], pages: int) -> tuple[float, float, float, int]:
    """Walk up to ``pages`` pages; (median ms, median commands, median round trips, runs seen) per page."""
    from mollifier_project.clock import from_ms
    from runs import listing

    times, commands, trips, seen = [], [], [], 0
    params = dict(params)
    for _ in range(pages):
        before = (counter.commands, counter.round_trips)
        t0 = time.perf_counter()
        out = listing.list_runs(ctx, params, buffer=buffer, now=from_ms(int(time.time() * 1000)))
        times.append((time.perf_counter() - t0) * 1000)
        commands.append(counter.commands - before[0])
        trips.append(counter.round_trips - before[1])
        seen += len(out["data"])
        if "next" not in out["pagination"]:
            break
        params["page[after]"] = out["pagination"]["next"]
    return statistics.median(times), statistics.median(commands), statistics.median(trips), seen


def bulk_cancel(buffer, counter, ctx, body: dict) -> dict[str, float]:
    from runs import bulk
    from runs.bulk_schemas import CreateBulkActionBody
    from runs.models import BulkAction, TaskRun

    rows_before = TaskRun.objects.count()
    trips_before = counter.round_trips
    action = bulk.create(ctx, CreateBulkActionBody.model_validate(body), now_ms=int(time.time() * 1000))
    t0 = time.perf_counter()
    progress = bulk.execute(action.id, buffer=buffer, time_budget_s=3600)
    seconds = time.perf_counter() - t0
    assert progress.finished
    action = BulkAction.objects.get(id=action.id)
    return {
        "runs": action.success, "failure": action.failure, "seconds": seconds, "per_s": action.success / seconds,
        "chunks": action.chunks, "round_trips": counter.round_trips - trips_before,
        "taskrun_rows": TaskRun.objects.count() - rows_before, "bulkaction_writes": 1 + action.chunks,
    }  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_django(database=args.database)
    from django.conf import settings

    from buffer.buffer import Buffer
    from drainer.drain import run_round
    from drainer.limits import DrainLimits
    from runs import mutations
    from runs.auth import EnvContext
    from runs.models import Environment, Organization, RunStatus, TaskRun

    client, counter = counting_client(settings.REDIS_URL)
    prefix = f"bench-bulk-{uuid.uuid4().hex[:8]}"
    buffer = Buffer(client, prefix=prefix, shards=1)
    org = Organization.objects.create(slug=prefix, name=prefix, feature_flags={"mollifier": True})
    big, small = (Environment.objects.create(org=org, slug=slug) for slug in ("big", "small"))
    ctx = {env.id: EnvContext(env.id, org.id, env.slug, env.type, org.slug, True) for env in (big, small)}
    base_ms = int(time.time() * 1000) - 10 * 86_400_000
    try:
        t0 = time.perf_counter()
        storm, other = fill(buffer, big, args.buffered, storm_every=args.storm_every, base_ms=base_ms)
        _, small_ids = fill(buffer, small, args.baseline, storm_every=args.baseline + 1, base_ms=base_ms)
        print(f"filled {args.buffered:,} buffered runs ({len(storm):,} storm) + {args.baseline:,} baseline "
              f"in {time.perf_counter() - t0:.1f} s")  # fmt: skip
        client.ping()

        print(f"\nrun list, per page (median of up to {args.pages} pages)")
        print(f"{'case':<34}{'env':>10}{'ms':>9}{'commands':>10}{'round trips':>13}{'ms ratio':>10}")
        cases = {
            "unfiltered, size 25": {"page[size]": "25"},
            "unfiltered, size 100": {"page[size]": "100"},
            f"task=storm (1 in {args.storm_every}), size 25": {"page[size]": "25", "filter[taskIdentifier]": "storm"},
            "task matching nothing, size 25": {"page[size]": "25", "filter[taskIdentifier]": "none"},
        }
        calls_per_page = 0.0
        for name, params in cases.items():
            small_params = dict(params)
            if "storm" in params.get("filter[taskIdentifier]", ""):
                small_params["filter[taskIdentifier]"] = "other"  # the baseline env has no storm runs
            base = list_case(buffer, counter, ctx[small.id], small_params, args.pages)
            measured = list_case(buffer, counter, ctx[big.id], params, args.pages)
            calls_per_page = max(calls_per_page, measured[2])
            for label, m in ((f"{args.baseline:,}", base), (f"{args.buffered:,}", measured)):
                ratio = f"{m[0] / base[0]:.2f}×" if m is measured else ""
                print(f"{name:<34}{label:>10}{m[0]:>9.1f}{m[1]:>10.0f}{m[2]:>13.0f}{ratio:>10}")

        print("\nbulk cancel (runs.bulk.execute in-process)")
        t0 = time.perf_counter()
        for run_id in small_ids[:1000]:
            mutations.cancel(ctx[small.id], run_id, buffer=buffer, now_ms=int(time.time() * 1000), wait_ms=0)
        single = 1000 / (time.perf_counter() - t0)
        print(f"{'baseline: runs.cancel one by one':<44}{single:>10,.0f} runs/s")
        results = {
            f"by filter task=storm ({len(storm):,})": {"action": "cancel", "filter": {"taskIdentifier": "storm"}},
            f"by {args.by_ids:,} run ids": {"action": "cancel", "runIds": other[: args.by_ids]},
            "by filter status=QUEUED (the rest)": {"action": "cancel", "filter": {"status": "QUEUED"}},
        }
        print(f"{'case':<44}{'runs':>9}{'s':>8}{'runs/s':>10}{'ratio':>8}{'chunks':>8}{'round trips':>13}"
              f"{'TaskRun rows':>14}{'BulkAction writes':>19}")  # fmt: skip
        first_rate = 0.0
        for name, body in results.items():
            r = bulk_cancel(buffer, counter, ctx[big.id], body)
            first_rate = first_rate or r["per_s"]
            print(f"{name:<44}{r['runs']:>9,}{r['seconds']:>8.2f}{r['per_s']:>10,.0f}{r['per_s'] / single:>7.0f}×"
                  f"{r['chunks']:>8}{r['round_trips']:>13,}{r['taskrun_rows']:>14}{r['bulkaction_writes']:>19}")  # fmt: skip
        live = sum(1 for e in buffer.env_page(org_id=org.id, env_id=big.id, before=None, limit=1000) if not e.cancelled)
        assert live == 0, f"{live} buffered runs are not cancelled"

        print("\nthe drain afterwards writes the CANCELED rows")
        limits = DrainLimits.from_settings(settings.MOLLIFIER)
        t0 = time.perf_counter()
        while TaskRun.objects.filter(env=big).count() < len(storm):
            run_round(buffer, shard=0, limits=limits, now_ms=int(time.time() * 1000))
        drained = TaskRun.objects.filter(env=big).count()
        seconds = time.perf_counter() - t0
        statuses = set(TaskRun.objects.filter(env=big).values_list("status", flat=True))
        assert statuses == {RunStatus.CANCELED}, statuses
        print(f"{drained:,} CANCELED rows in {seconds:.1f} s ({drained / seconds:,.0f} rows/s); no live row written")
        print(
            f"list_calls_per_page={calls_per_page:.0f} bulk_cancel_runs_per_s={first_rate:.0f} rows_written_by_cancel=0"
        )
    finally:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=10_000))
        for i in range(0, len(keys), 10_000):
            client.delete(*keys[i : i + 10_000])
        from django.db import connection

        with connection.cursor() as cur:  # a raw delete: the ORM's cascade collector is slow for 100k rows
            cur.execute(f"DELETE FROM {TaskRun._meta.db_table} WHERE org_id = %s", [org.id])
        org.delete()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
