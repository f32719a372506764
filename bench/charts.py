"""The idle cost of the dashboard charts' sampling (docs/operations.md#dashboard-charts), against the fan-out's
own tick mark in the same run.

    python -m bench.charts [--windows 20] [--repeat 9] [--shards 16]

It starts a private ``redis-server`` (``bench.scripts.start_server``) and times, interleaved, ``--repeat``
batches of ``--windows`` sample windows (15 s of 1 s ticks each: 15 ticks, on a simulated clock) of:

- ``off``: the fan-out's tick mark with the charts off (``CHART_SAMPLE_S=0``): one SET a tick;
- ``on``: what the fan-out does with the charts on: ``drainer.tasks.chart_gate_ms`` (the ticks in the first
  two seconds of a window ask for the gate, in the mark's round trip) and, on the tick that wins it,
  ``record_chart_samples`` of every shard. The gate's PX runs in real time, faster than the simulated clock,
  so it is deleted at each window's start, as its expiry would.

It prints the median and the minimum µs per tick of each (the box may be noisy: the minimum is the cost
without interference), the ratios ``on / off``, and the cost of one ``record_chart_samples``. The last line
is machine-readable: ``off_us=<a> on_us=<b> ratio=<b/a> min_ratio=<c> sample_us=<d>`` (medians per tick); the
line before it gives the same from the server's side (``INFO commandstats`` µs, which the client's noise does
not reach): ``server_off_us``, ``server_on_us`` per tick and ``server_sample_us`` per sample.
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

EVERY_S, INTERVAL_S = 15, 1.0
TICKS = int(EVERY_S / INTERVAL_S)  # ticks per window


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=20, help="sample windows (15 ticks each) per batch")
    parser.add_argument("--repeat", type=int, default=9, help="batches of each kind (medians are printed)")
    parser.add_argument("--shards", type=int, default=16, help="SHARDS of the buffer sampled")
    args = parser.parse_args(argv)
    for name in ("windows", "repeat", "shards"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def server_usec(client) -> int:
    """The server's µs in every command so far (``INFO commandstats``), INFO itself aside: Redis CPU, which the
    client's noise does not reach."""
    return sum(int(v["usec"]) for k, v in client.info("commandstats").items() if k != "cmdstat_info")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_django()
    import redis

    from bench.scripts import start_server
    from buffer.buffer import Buffer
    from buffer.client import CLIENT_OPTIONS
    from buffer.keys import ShardKeys
    from drainer.tasks import chart_gate_ms

    results: dict[str, list[float]] = {"off": [], "on": [], "sample": []}
    server: dict[str, list[float]] = {"off": [], "on": [], "sample": []}
    with tempfile.TemporaryDirectory(prefix="mollifier-bench-charts-") as data_dir:
        proc, port = start_server(data_dir)
        try:
            client = redis.Redis(port=port, **CLIENT_OPTIONS)
            buffer = Buffer(client, prefix="mollifier", shards=args.shards)
            gate = ShardKeys("mollifier", 0).chart_due
            clock = [(int(time.time() * 1000) // 15_000) * 15_000]  # a window's start
            buffer.record_chart_samples(now_ms=clock[0] - 15_000, every_s=EVERY_S)  # warm-up: scripts loaded

            def off(t: int) -> None:
                buffer.mark_fan_out_tick(now_ms=t)

            def on(t: int) -> None:
                if t % (EVERY_S * 1000) == 0:
                    client.delete(gate)  # its PX would have run out by now on a real clock (not timed)
                due = buffer.mark_fan_out_tick(
                    now_ms=t, chart_every_ms=chart_gate_ms(t, every_s=EVERY_S, interval_s=INTERVAL_S)
                )
                if due:
                    buffer.record_chart_samples(now_ms=t, every_s=EVERY_S)

            def ticks(fn: Callable[[int], None]) -> float:
                """µs per tick over ``--windows`` windows (the gate deletions are outside the timing's intent)."""
                start_t = clock[0]
                clock[0] += args.windows * TICKS * 1000
                begin = time.perf_counter()
                for i in range(args.windows * TICKS):
                    fn(start_t + i * 1000)
                return (time.perf_counter() - begin) / (args.windows * TICKS) * 1e6

            def sample() -> float:
                begin = time.perf_counter()
                for _ in range(args.windows):
                    clock[0] += EVERY_S * 1000
                    buffer.record_chart_samples(now_ms=clock[0], every_s=EVERY_S)
                return (time.perf_counter() - begin) / args.windows * 1e6

            for _ in range(args.repeat):
                for name, run, per in (("off", lambda: ticks(off), args.windows * TICKS),
                                       ("on", lambda: ticks(on), args.windows * TICKS),
                                       ("sample", sample, args.windows)):  # fmt: skip
                    before = server_usec(client)
                    results[name].append(run())
                    server[name].append((server_usec(client) - before) / per)
            client.close()
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    med = {name: statistics.median(values) for name, values in results.items()}
    low = {name: min(values) for name, values in results.items()}
    print(f"private redis-server, {args.shards} shards, {args.repeat} interleaved batches of {args.windows} windows "
          f"({TICKS} ticks of {INTERVAL_S:g} s each, one sample a window when on); µs per tick (sample: per call):")  # fmt: skip
    for name, values in results.items():
        print(
            f"  {name:>6}: median {med[name]:8.1f}  min {low[name]:8.1f}  (batches: {', '.join(f'{v:.0f}' for v in values)})"
        )
    srv = {name: statistics.median(values) for name, values in server.items()}
    print("  Redis µs per tick (INFO commandstats, median): " + ", ".join(f"{n} {v:.2f}" for n, v in srv.items()))
    print(f"server_off_us={srv['off']:.2f} server_on_us={srv['on']:.2f} server_sample_us={srv['sample']:.1f}")
    print(f"off_us={med['off']:.1f} on_us={med['on']:.1f} ratio={med['on'] / med['off']:.2f} "
          f"min_ratio={low['on'] / low['off']:.2f} sample_us={med['sample']:.1f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
