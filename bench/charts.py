"""The idle cost of the dashboard charts' sampling (docs/operations.md#dashboard-charts), against the fan-out's
own tick mark in the same run.

    python -m bench.charts [--calls 2000] [--repeat 7] [--shards 16]

It starts a private ``redis-server`` (``bench.scripts.start_server``) and times, interleaved, ``--repeat``
batches of ``--calls`` each of:

- ``tick``: ``mark_fan_out_tick(now_ms=…)`` with the charts off (one SET: the tick's cost before the charts);
- ``tick+gate``: the same with ``chart_every_ms=15000`` while the gate is held, as on every tick but one per
  interval (the SET and a SET NX PX, pipelined in the same round trip);
- ``sample``: ``record_chart_samples`` of every shard (a stats read and a chart_sample per shard, two round
  trips), what the one tick per interval that wins the gate adds.

It prints the median µs per call of each, and the ratio of ``tick+gate`` to ``tick``. The last line is
machine-readable: ``tick_us=<a> tick_gate_us=<b> ratio=<b/a> sample_us=<c>``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._django import setup_django


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2_000, help="calls per batch")
    parser.add_argument("--repeat", type=int, default=7, help="batches of each kind (medians are printed)")
    parser.add_argument("--shards", type=int, default=16, help="SHARDS of the buffer sampled")
    args = parser.parse_args(argv)
    for name in ("calls", "repeat", "shards"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def per_call_us(fn: Callable[[int], object], calls: int) -> float:
    start = time.perf_counter()
    for i in range(calls):
        fn(i)
    return (time.perf_counter() - start) / calls * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_django()
    import redis

    from bench.scripts import start_server
    from buffer.buffer import Buffer
    from buffer.client import CLIENT_OPTIONS

    now = int(time.time() * 1000)
    results: dict[str, list[float]] = {"tick": [], "tick+gate": [], "sample": []}
    with tempfile.TemporaryDirectory(prefix="mollifier-bench-charts-") as data_dir:
        proc, port = start_server(data_dir)
        try:
            client = redis.Redis(port=port, **CLIENT_OPTIONS)
            buffer = Buffer(client, prefix="mollifier", shards=args.shards)
            assert buffer.mark_fan_out_tick(now_ms=now, chart_every_ms=3_600_000)  # the gate held from here on
            buffer.record_chart_samples(now_ms=now, every_s=15)  # warm-up: scripts loaded
            step = [now]

            def sample(_: int) -> object:
                step[0] += 15_000  # a new interval each call, as the winning ticks see it
                return buffer.record_chart_samples(now_ms=step[0], every_s=15)

            kinds: dict[str, Callable[[int], object]] = {
                "tick": lambda i: buffer.mark_fan_out_tick(now_ms=now + i),
                "tick+gate": lambda i: buffer.mark_fan_out_tick(now_ms=now + i, chart_every_ms=15_000),
                "sample": sample,
            }
            for _ in range(args.repeat):
                for name, fn in kinds.items():
                    results[name].append(per_call_us(fn, args.calls if name != "sample" else args.calls // 10))
            client.close()
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    medians = {name: statistics.median(values) for name, values in results.items()}
    print(f"private redis-server, {args.shards} shards, {args.repeat} interleaved batches; median µs per call:")
    for name, values in results.items():
        print(f"  {name:>10}: {medians[name]:7.1f}  (batches: {', '.join(f'{v:.1f}' for v in values)})")
    ratio = medians["tick+gate"] / medians["tick"]
    print(f"tick_us={medians['tick']:.1f} tick_gate_us={medians['tick+gate']:.1f} ratio={ratio:.2f} "
          f"sample_us={medians['sample']:.1f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
