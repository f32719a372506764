"""The drain worker's Python cost per row, from a leased entry's fields to the bytes of its COPY row.

    python -m bench.row_path [--rows 2000] [--repeat 30]

One process, no Redis, no COPY to a server: the stages a drain round runs for each entry, timed over
``--rows`` entries ``--repeat`` times and reported as the median µs per row:

1. ``parse_leased``: the lease reply's values → ``Entry`` (``buffer.values``);
2. ``_parse``: the snapshot document → ``Snapshot``, checked against its entry, overrides applied
   (``drainer.drain``);
3. ``row``: validation and the row tuple (``runs.engine``: what ``materialise_many`` does per snapshot);
4. ``write_row``: psycopg's binary COPY formatter turning the row into bytes (what ``copy.write_row`` costs
   on the client; the socket write is left out);
5. ``path``: 1–4 in one pass, as a round runs them.

Then the dwell histogram a round records for its acked entries (``drainer.telemetry.record_round``): one
``observe`` per row against ``drainer.metrics.observe_many`` over the round, per row. ``--multiprocess``
measures it in prometheus-client's multiprocess mode (a temporary ``PROMETHEUS_MULTIPROC_DIR``), which the
Procfile's worker runs in: there each observe is a locked write to a memory-mapped file.

Two snapshots: the bench's realistic one (``bench.materialise.build_snapshots``: ≈650 B, a 200-byte payload,
2 tags, an idempotency key, trace ids) and a minimal one (id, env, org, task, created_ms). The floor,
measured in the same run, is what no implementation can skip — ``orjson.loads`` of the document and the
COPY formatter (psycopg's dumpers) on a row built beforehand — and the last line is machine-readable:
``path_us=<realistic> path_minimal_us=<minimal> path/floor=<ratio>`` (the ratio is what to compare across
runs on a shared machine). Needs the bench database only for the column types (``<DATABASE_URL>_bench``).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._django import setup_django


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2000, help="entries per timed pass")
    parser.add_argument("--repeat", type=int, default=30, help="timed passes per stage; medians are reported")
    parser.add_argument("--database", default=None, help="database name (default: DATABASE_URL's + _bench)")
    parser.add_argument("--multiprocess", action="store_true", help="prometheus-client's multiprocess mode")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.repeat < 1:
        parser.error("--rows and --repeat must be at least 1")
    return args


def lease_values(snapshot_text: str, env_id: int, org_id: int, accepted_ms: int) -> list[str | None]:
    """One entry of a ``lease`` reply (``LEASE_FIELDS`` order) as redis-py hands it over: strings, None if absent."""
    return [snapshot_text, str(env_id), str(org_id), "LEASED", "0", str(accepted_ms), str(accepted_ms + 30_000),
            None, None, None, None, None, None, None, None]  # fmt: skip


def per_row_us(run: Callable[[], object], rows: int, repeat: int) -> float:
    """Median µs per row of ``repeat`` passes of ``run`` (one pass handles ``rows`` entries)."""
    run()  # warm caches and lazy imports
    samples = []
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter_ns()
        run()
        samples.append((time.perf_counter_ns() - started) / rows / 1000)
    return statistics.median(samples)


def dwell_us(rows: int, repeat: int) -> tuple[float, float]:
    """µs per row of recording a round's dwell times: ``observe`` per row, and ``observe_many`` once."""
    from prometheus_client import CollectorRegistry, Histogram

    from drainer import metrics

    buckets = metrics.DWELL._upper_bounds[:-1]  # the drain's buckets (+Inf is implied)
    histogram = Histogram("bench_dwell_seconds", "bench", buckets=buckets, registry=CollectorRegistry())
    dwells = [(i % 5000) / 1000 for i in range(rows)]

    def each() -> None:
        for dwell in dwells:
            histogram.observe(dwell)

    return per_row_us(each, rows, repeat), per_row_us(lambda: metrics.observe_many(histogram, dwells), rows, repeat)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.multiprocess:  # read when prometheus-client is imported: before Django imports it
        import tempfile

        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="row-path-prometheus-")
    setup_django(database=args.database)

    import orjson
    import psycopg
    from django.db import connection
    from psycopg import adapt, pq
    from psycopg._copy_base import BinaryFormatter  # the formatter ``Copy.write_row`` calls

    from bench.materialise import build_snapshots
    from buffer.values import parse_leased
    from drainer import drain
    from runs import engine, staging
    from runs.rows import COLUMNS, build
    from runs.snapshot import Snapshot, to_snapshot

    with connection.cursor() as cur:
        types = staging._stage_types(cur)[:-1]
    now = datetime.now(tz=UTC).replace(microsecond=0)
    now_ms = int(now.timestamp() * 1000)
    realistic = next(s for s in build_snapshots(2, env_id=7, org_id=3, now=now, seed=1) if s.idempotency_key)
    minimal = Snapshot(id=realistic.id, env_id=7, org_id=3, task_identifier="hello", created_at=realistic.created_at)

    def prepare(s: Any) -> Any:  # what ``materialise_many`` runs per snapshot: validate, then the row
        tags = engine.normalise_tags(s.tags)
        return engine.validate(s, tags=tags) or build(s, now=now, buffered=True, tags=tags)

    def formatter(*, as_engine: bool = True) -> Any:
        context = adapt.AdaptersMap(psycopg.adapters)
        if as_engine:  # the dumper the engine's COPY registers
            context.register_dumper(None, staging._tags_dumper(types[COLUMNS.index("tags")]))
        tx = adapt.Transformer(context)
        tx.set_dumper_types(types, pq.Format.BINARY)
        return BinaryFormatter(tx)

    print(f"{args.rows} rows × {args.repeat} passes per stage; median µs per row (a shared 2-core machine)")
    print(f"{'stage':<14} {'realistic':>10} {'minimal':>10}")
    results: dict[str, dict[str, float]] = {}
    for label, snapshot in (("realistic", realistic), ("minimal", minimal)):
        text = to_snapshot(snapshot)
        values = [lease_values(text, 7, 3, now_ms) for _ in range(args.rows)]
        run_id = snapshot.id
        entries = [parse_leased(run_id, v) for v in values]
        parsed = [drain._parse(e) for e in entries]
        rows = [prepare(s) for s in parsed]
        assert all(isinstance(r, tuple) for r in rows), f"{label}: the snapshot does not validate: {rows[0]!r}"
        fmt, plain = formatter(), formatter(as_engine=False)  # the floor is psycopg's own, in every tree
        stages: dict[str, Callable[[], object]] = {
            "floor": lambda text=text, rows=rows, fmt=plain: [(orjson.loads(text), fmt.write_row(r)) for r in rows],
            "parse_leased": lambda values=values, run_id=run_id: [parse_leased(run_id, v) for v in values],
            "_parse": lambda entries=entries: [drain._parse(e) for e in entries],
            "row": lambda parsed=parsed: [prepare(s) for s in parsed],
            "write_row": lambda rows=rows, fmt=fmt: [fmt.write_row(r) for r in rows],
            "path": lambda values=values, run_id=run_id, fmt=fmt: [
                fmt.write_row(prepare(drain._parse(parse_leased(run_id, v)))) for v in values
            ],
        }
        results[label] = {name: per_row_us(run, args.rows, args.repeat) for name, run in stages.items()}
        results[label]["bytes"] = len(text.encode())
    for name in ("bytes", "parse_leased", "_parse", "row", "write_row", "path", "floor"):
        r, m = results["realistic"][name], results["minimal"][name]
        print(f"{name:<14} {r:>10.0f} {m:>10.0f}" if name == "bytes" else f"{name:<14} {r:>10.2f} {m:>10.2f}")
    each, many = dwell_us(args.rows, args.repeat)
    mode = "multiprocess" if args.multiprocess else "single-process"
    print(f"dwell histogram, {mode} mode: {each:.2f} µs a row observed one by one, {many:.2f} µs with observe_many")
    real = results["realistic"]
    print(
        f"path_us={real['path']:.2f} path_minimal_us={results['minimal']['path']:.2f} "
        f"path/floor={real['path'] / real['floor']:.2f} dwell_each_us={each:.2f} dwell_many_us={many:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
