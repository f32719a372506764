"""How fast the drain writes rows: ``engine.materialise_many`` against a raw COPY and one ``trigger`` per row.

    python -m bench.materialise --rows 50000 [--batch 1000] [--per-row-rows 5000] [--repeat 3]

Four measurements, each repeated ``--repeat`` times (interleaved, so drift hits all three alike) on an
emptied table, reported as medians:

(a) ``materialise_many`` on real ``Snapshot`` objects (≈200-byte payload, 2 tags, an idempotency key on
    half), one call per ``--batch`` snapshots — what a replayed drain round does (staged: COPY into a
    temporary table, then ``INSERT … SELECT … ON CONFLICT DO NOTHING``); and the same with ``fresh=True``
    — what a drain round of first attempts does (one plain COPY, docs/architecture.md#drain-throughput);
(b) raw binary COPY of the same rows into the same table, one COPY and one commit per ``--batch`` rows —
    the floor the engine's bulk path is measured against (rows prepared before the clock starts);
(c) one ``engine.trigger`` per row on ``--per-row-rows`` rows — the pass-through path.

The last line is machine-readable: ``materialise_many/copy=<ratio> materialise_many/per_row=<ratio>
fresh/copy=<ratio>`` (ratios of rows/s). Runs against ``<DATABASE_URL database>_bench``, created and migrated on first use,
so it never touches development or test data.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._django import Measurement, setup_django

TASKS = ("send-email", "charge-card", "sync-crm", "resize-image", "notify-slack")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000, help="rows for materialise_many and COPY")
    parser.add_argument("--batch", type=int, default=1000, help="snapshots per materialise_many call / COPY")
    parser.add_argument("--per-row-rows", type=int, default=5000, help="rows for one-trigger-per-row")
    parser.add_argument("--repeat", type=int, default=3, help="measurements per method; medians are reported")
    parser.add_argument("--database", default=None, help="database name (default: DATABASE_URL's + _bench)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    for name in ("rows", "batch", "per_row_rows", "repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def build_snapshots(n: int, *, env_id: int, org_id: int, now: datetime, seed: int) -> list[Any]:
    """Realistic snapshots: ≈200-byte JSON payload, 2 tags, an idempotency key on every other run."""
    from runs.ids import new_run_id
    from runs.snapshot import Snapshot

    rng = random.Random(seed)
    now_ms = int(now.timestamp() * 1000)
    snapshots = []
    for i in range(n):
        created_ms = now_ms - rng.randrange(60_000)
        payload = json.dumps(
            {
                "json": {
                    "orderId": f"ord_{i:09d}",
                    "customerId": f"cus_{rng.randrange(10**8):08d}",
                    "amount": rng.randrange(100, 100_000),
                    "currency": "EUR",
                    "items": [{"sku": f"SKU-{rng.randrange(10**4):04d}", "qty": rng.randrange(1, 5)} for _ in range(3)],
                    "note": "leave at the door",
                }
            },
            separators=(",", ":"),
        )
        task = TASKS[i % len(TASKS)]
        snapshots.append(
            Snapshot(
                id=new_run_id(created_ms),
                env_id=env_id,
                org_id=org_id,
                task_identifier=task,
                created_at=datetime.fromtimestamp(created_ms / 1000, tz=UTC),
                payload=payload,
                payload_type="application/super+json",
                tags=[f"customer_{rng.randrange(1000)}", "source_api"],
                idempotency_key=f"order-{seed}-{i}" if i % 2 == 0 else None,
                idempotency_key_expires_at=now + timedelta(days=30) if i % 2 == 0 else None,
                queue=f"task/{task}",
                max_attempts=3,
                machine="small-1x",
                trace_id=f"{rng.getrandbits(128):032x}",
                span_id=f"{rng.getrandbits(64):016x}",
            )
        )
    return snapshots


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    url = setup_django(database=args.database)

    from django.db import connection, transaction

    from runs import engine, rows
    from runs.models import Environment, Organization, TaskRun

    table = TaskRun._meta.db_table
    org, _ = Organization.objects.get_or_create(slug="bench", defaults={"name": "Bench"})
    env, _ = Environment.objects.get_or_create(org=org, slug="bench")
    now = datetime.now(tz=UTC).replace(microsecond=0)
    snapshots = build_snapshots(
        max(args.rows, args.per_row_rows), env_id=env.id, org_id=org.id, now=now, seed=args.seed
    )
    bulk, per_row = snapshots[: args.rows], snapshots[: args.per_row_rows]
    # The raw COPY writes exactly the rows the engine would (same builder), prepared before the clock starts.
    copy_rows = [rows.build(s, now=now, buffered=True) for s in bulk]
    with connection.cursor() as cur:
        cur.execute(
            "SELECT a.attname, a.atttypid FROM pg_attribute a WHERE a.attrelid = %s::regclass AND a.attnum > 0",
            [table],
        )
        oids = dict(cur.fetchall())
    copy_types = [oids[c] for c in rows.COLUMNS]

    def truncate() -> None:
        with connection.cursor() as cur:
            cur.execute(f"TRUNCATE {table} CASCADE")

    def count() -> int:
        return TaskRun.objects.count()

    def run_materialise_many() -> int:
        created = 0
        for i in range(0, len(bulk), args.batch):
            results = engine.materialise_many(bulk[i : i + args.batch], now=now)
            created += sum(r.outcome is engine.Outcome.CREATED for r in results)
        return created

    def run_materialise_fresh() -> int:
        created = 0
        for i in range(0, len(bulk), args.batch):
            results = engine.materialise_many(bulk[i : i + args.batch], now=now, fresh=True)
            created += sum(r.outcome is engine.Outcome.CREATED for r in results)
        return created

    def run_copy() -> int:
        columns = ", ".join(rows.COLUMNS)
        for i in range(0, len(copy_rows), args.batch):
            with transaction.atomic(), connection.cursor() as cur:
                with cur.cursor.copy(f"COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(copy_types)
                    for row in copy_rows[i : i + args.batch]:
                        copy.write_row(row)
        return len(copy_rows)

    def run_per_row() -> int:
        return sum(engine.trigger(s, now=now).outcome is engine.Outcome.CREATED for s in per_row)

    methods: list[tuple[Measurement, Callable[[], int]]] = [
        (Measurement("materialise_many", len(bulk)), run_materialise_many),
        (Measurement("copy (raw, binary)", len(bulk)), run_copy),
        (Measurement("materialise_many fresh", len(bulk)), run_materialise_fresh),
        (Measurement("trigger per row", len(per_row)), run_per_row),
    ]
    payload_bytes = statistics.mean(len(s.payload.encode()) for s in bulk)
    print(
        f"database {url.rsplit('/', 1)[-1]}; batch {args.batch}; repeat {args.repeat}; payload ≈{payload_bytes:.0f} B"
    )
    for _ in range(args.repeat):
        for measurement, run in methods:
            truncate()
            started = time.perf_counter()
            written = run()
            measurement.seconds.append(time.perf_counter() - started)
            if written != measurement.rows or count() != measurement.rows:
                raise SystemExit(
                    f"{measurement.method}: wrote {written}, table has {count()}, expected {measurement.rows}"
                )
    truncate()

    print(f"{'method':<24} {'rows':>8} {'seconds':>9} {'rows/s (median)':>16}")
    for measurement, _ in methods:
        print(
            f"{measurement.method:<24} {measurement.rows:>8} {measurement.median_seconds:>9.3f} "
            f"{measurement.rows_per_second:>16,.0f}"
        )
    bulk_rate, copy_rate, fresh_rate, per_row_rate = (m.rows_per_second for m, _ in methods)
    print(
        f"materialise_many/copy={bulk_rate / copy_rate:.2f} materialise_many/per_row={bulk_rate / per_row_rate:.2f} "
        f"fresh/copy={fresh_rate / copy_rate:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
