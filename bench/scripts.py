"""Redis CPU per entry of the drain's two scripts, ``lease`` and ``ack``, measured inside the server.

    python -m bench.scripts [--entries 5000] [--batch 100] [--repeat 3]

It starts a private ``redis-server`` (a free loopback port, no persistence, stopped at the end) so that no
other client's commands are counted, parks ``--entries`` typical (647 B) snapshots of one env through
``Buffer.accept``, then leases them in rounds of ``--batch`` (``lease_round``, the drain's call) and acks
each round (``ack``, with the drain's default 30 s grace). Around the lease calls and around the ack calls
it reads ``INFO commandstats`` and takes the ``cmdstat_evalsha`` usec delta: the server's time inside the
script, every ``redis.call`` in it included, without the network or the client. Divided by the entries,
that is the Redis CPU per drained entry of each script. ``--repeat`` fills and drains again; the medians
are printed.

The last line is machine-readable: ``lease_us_per_entry=<x> ack_us_per_entry=<y>``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._django import setup_django

ORG, ENV = 7, 100


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=5_000, help="entries parked per repeat")
    parser.add_argument("--batch", type=int, default=100, help="entries per lease round and ack")
    parser.add_argument("--repeat", type=int, default=3, help="fill-and-drain passes (medians are printed)")
    args = parser.parse_args(argv)
    for name in ("entries", "batch", "repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def evalsha_usec(client) -> int:
    """The server's total µs spent in EVALSHA so far (every script call, its redis.calls included)."""
    stats = client.info("commandstats").get("cmdstat_evalsha")
    return int(stats["usec"]) if stats else 0


def start_server(data_dir: str) -> tuple[subprocess.Popen[bytes], int]:
    import redis

    from tests.live import free_port

    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not on PATH")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", data_dir, "--save", "", "--appendonly", "no",
         "--logfile", str(Path(data_dir) / "redis.log")],
    )  # fmt: skip
    probe = redis.Redis(port=port, socket_connect_timeout=0.2)
    deadline = time.monotonic() + 10
    while True:
        try:
            probe.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.02)
    probe.close()
    return proc, port


def one_pass(buffer, client, docs, *, batch: int) -> tuple[float, float]:
    """Park ``docs``, lease and ack them all; (lease µs per entry, ack µs per entry) of server time."""
    now_ms = int(time.time() * 1000)
    for run_id, env, doc in docs:
        result = buffer.accept(
            run_id=run_id, env_id=env, org_id=ORG, snapshot=doc, now_ms=now_ms, idempotency=None, max_per_env=10**9
        )
        assert result.status.value == "ACCEPTED", result
    lease_us = ack_us = 0
    taken = 0
    while True:
        t0 = evalsha_usec(client)
        leased = buffer.lease_round(
            0, [(ORG, ENV, batch)], now_ms=now_ms, lease_ms=30_000, max_bytes=64 * 1024 * 1024
        ).entries
        t1 = evalsha_usec(client)
        if not leased:
            break
        assert all(e.snapshot.startswith("{") for e in leased)
        acked = buffer.ack(0, [e.run_id for e in leased], now_ms=now_ms, grace_ms=30_000)
        t2 = evalsha_usec(client)
        assert acked.count == len(leased), acked
        lease_us += t1 - t0
        ack_us += t2 - t1
        taken += len(leased)
    assert taken == len(docs), (taken, len(docs))
    client.flushdb()
    return lease_us / taken, ack_us / taken


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_django()
    import redis

    from bench.memory import snapshots
    from buffer.buffer import Buffer
    from buffer.client import CLIENT_OPTIONS

    with tempfile.TemporaryDirectory(prefix="mollifier-bench-scripts-") as data_dir:
        proc, port = start_server(data_dir)
        try:
            client = redis.Redis(port=port, **CLIENT_OPTIONS)
            buffer = Buffer(client, prefix="mollifier", shards=1)
            docs = snapshots("typical", args.entries, env_ids=[ENV], now_ms=int(time.time() * 1000))
            one_pass(buffer, client, docs[: min(len(docs), 200)], batch=args.batch)  # warm-up: scripts loaded
            results = [one_pass(buffer, client, docs, batch=args.batch) for _ in range(args.repeat)]
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    lease = statistics.median(r[0] for r in results)
    ack = statistics.median(r[1] for r in results)
    print(f"{args.entries} typical (647 B) entries, lease/ack rounds of {args.batch}, {args.repeat} passes; "
          f"server µs inside EVALSHA (INFO commandstats), private redis-server")  # fmt: skip
    print("per pass (lease, ack) µs/entry: " + ", ".join(f"({a:.1f}, {b:.1f})" for a, b in results))
    print(f"lease_us_per_entry={lease:.1f} ack_us_per_entry={ack:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
