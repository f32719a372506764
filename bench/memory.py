"""What one buffered entry costs in Redis memory, for small, typical and large snapshots.

    python -m bench.memory [--entries 5000] [--envs 1] [--repeat 2000] [--threshold N]

For each snapshot size — small (≈100 B), typical (647 B: a realistic SDK v4 trigger with payload, tags,
idempotency key, trace ids) and large (≈10 KiB payload) — it accepts ``--entries`` runs through the real
accept script (the stored form and created_ms built as ``Buffer.accept`` builds them) under a fresh key
prefix, spread over ``--envs`` envs of one org, and sums ``MEMORY USAGE`` (``SAMPLES 0``: exact) over every
key an entry owns (its hash ``e:<run>`` and snapshot ``s:<run>``) plus its share of the keys it is a member
of (its env's queue ``q:<env>`` and index ``ix:<env>``, the shard's counters and heads). That is "bytes per
entry"; a GiB of Redis holds 2^30 / that many entries.

Twice per size: compression off (``SNAPSHOT_COMPRESS_MIN_BYTES=0``, every snapshot plain JSON) and on (the
setting's value, or ``--threshold``; buffer/stored_snapshot.py: zlib level 1 with the format's preset
dictionary, stored only when smaller). With each, the Python CPU compression adds per trigger (``pack`` and
``created_ms``) and per drained row (the client's reply decode and ``unpack``), medians of ``--repeat``.

The old-layout column, in the same run, is the layout before the snapshot got its own key: one hash per
entry with the snapshot as a field (written here with HSET, the fields the accept script wrote), plus the
queue — no env index. A snapshot longer than ``hash-max-listpack-value`` (64 B by default) turns that hash
into a hashtable, which is where most of its bytes go.

Then an SDK storm (``--storm`` triggers, 0 to skip): every trigger through the trigger service
(``runs.trigger.prepare`` and ``trigger``, the gate tripped, compression on) with the body and the fresh
``x-trigger-request-idempotency-key`` the SDK v4 sends, and the bytes per buffered run of every key under
the storm's prefix (``MEMORY USAGE``), by key family. The request keys are what stays after the storm's runs
are drained: the line says for how long (``REQUEST_KEY_TTL_S``) and what 24 h (the lifetime before the
setting) held.

The last line is machine-readable:
``typical_bytes=<on> typical_uncompressed_bytes=<off> baseline_bytes=<old layout> ratio=<off/on>
storm_bytes=<all keys per run>``. The Redis keys are deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._django import setup_django

ORG = 7
GIB = 2**30
SIZES = {"small": 100, "typical": 647, "large": 10 * 1024}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=5_000, help="entries per snapshot size")
    parser.add_argument("--envs", type=int, default=1, help="envs the entries are spread over")
    parser.add_argument("--repeat", type=int, default=2_000, help="timed (de)compressions per size")
    parser.add_argument("--storm", type=int, default=5_000, help="SDK triggers in the storm (0: skip it)")
    parser.add_argument(
        "--threshold", type=int, default=None, help="compression threshold in bytes (default: the setting)"
    )
    args = parser.parse_args(argv)
    for name in ("entries", "envs", "repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def snapshots(kind: str, n: int, *, env_ids: Sequence[int], now_ms: int) -> list[tuple[str, int, str]]:
    """``n`` (run id, env, snapshot JSON) of about ``SIZES[kind]`` bytes, in the real snapshot format: the
    fields the SDK sends, and a payload of order lines (varied numbers, as real payloads compress)."""
    import dataclasses
    import random
    from datetime import UTC, datetime, timedelta

    from runs.ids import new_run_id
    from runs.snapshot import Snapshot, to_snapshot

    rng = random.Random(kind)
    target = SIZES[kind]
    out = []
    for i in range(n):
        env = env_ids[i % len(env_ids)]
        created = datetime.fromtimestamp((now_ms - i) / 1000, tz=UTC)
        run_id = new_run_id(now_ms - i)
        if kind == "small":
            s = Snapshot(id=run_id, env_id=env, org_id=ORG, task_identifier="t", created_at=created)
        else:
            s = Snapshot(
                id=run_id, env_id=env, org_id=ORG, task_identifier="process-order", created_at=created,
                payload_type="application/super+json", tags=[f"customer_{rng.randrange(1000)}", "source_api"],
                idempotency_key=f"{rng.getrandbits(256):064x}", idempotency_key_expires_at=created + timedelta(days=30),
                queue="task/process-order", max_attempts=3, machine="small-1x", trace_id=f"{rng.getrandbits(128):032x}",
                span_id=f"{rng.getrandbits(64):016x}",
            )  # fmt: skip
        order: dict = {"orderId": f"ord_{rng.randrange(10**9):09d}", "items": []}
        doc = to_snapshot(s)
        # Order lines are ≈50 bytes in the snapshot (escaped): start a few short of the target, add one by one.
        for _ in range(max(0, (target - len(doc)) // 50 - 3)):
            order["items"].append({"sku": f"SKU-{rng.randrange(10**4):04d}", "qty": rng.randrange(1, 9),
                                   "cents": rng.randrange(100, 10**5)})  # fmt: skip
        while True:
            payload = json.dumps({"json": order}, separators=(",", ":"))
            candidate = to_snapshot(dataclasses.replace(s, payload=payload))
            if len(candidate.encode()) > target:
                if order["items"]:
                    order["items"].pop()  # back to the last order that fitted
                break
            doc = candidate
            order["items"].append({"sku": f"SKU-{rng.randrange(10**4):04d}", "qty": rng.randrange(1, 9),
                                   "cents": rng.randrange(100, 10**5)})  # fmt: skip
        order["note"] = ""
        short = target - len(
            to_snapshot(dataclasses.replace(s, payload=json.dumps({"json": order}, separators=(",", ":")))).encode()
        )
        if short > 0:  # fill up to the exact size with a free-text note
            order["note"] = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz     ") for _ in range(short))
            doc = to_snapshot(dataclasses.replace(s, payload=json.dumps({"json": order}, separators=(",", ":"))))
        out.append((run_id, env, doc))
    return out


def usage(client, keys: Sequence[str]) -> int:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    return sum(v or 0 for v in pipe.execute())


def measure_layout(buffer, client, docs, env_ids) -> int:
    """Bytes per entry in today's layout, filled through the real accept script with ``buffer``'s
    compression threshold (the stored form and created_ms exactly as ``Buffer.accept`` sends them). Each
    run is accepted at its created_ms, as the trigger path does (so its hash needs no created_ms field)."""
    from buffer import stored_snapshot

    k = buffer.keys_for_org(ORG)
    pipe = client.pipeline(transaction=False)
    for run_id, env, doc in docs:
        now_ms = int(stored_snapshot.created_ms(doc, 0))
        stored, created_ms = buffer._stored(doc, now_ms)
        buffer._scripts.accept(
            keys=[k.entry(run_id), k.queue(env), k.org_envs(ORG), k.orgs],
            args=[run_id, env, ORG, stored, now_ms, 10**9, "", k.base, created_ms],
            client=pipe,
        )
    replies = pipe.execute()
    assert all(status == "ACCEPTED" for status, *_ in replies), replies[:3]
    per_entry = [key for run_id, _, _ in docs for key in (k.entry(run_id), k.snapshot(run_id))]
    shared = [k.queue(e) for e in env_ids] + [k.index(e) for e in env_ids] + [k.queued, k.heads, k.org_envs(ORG)]
    encodings = {client.object("encoding", k.entry(docs[0][0])), client.object("encoding", k.index(env_ids[0]))}
    assert "hashtable" not in encodings, f"the entry hash is not compact: {encodings}"
    read_back = buffer.get(docs[0][0], org_id=ORG)
    assert read_back is not None and read_back.snapshot == docs[0][2], "the snapshot does not read back"
    return (usage(client, per_entry) + usage(client, shared)) // len(docs)


def measure_baseline(client, prefix: str, docs, env_ids) -> int:
    """Bytes per entry with the snapshot inside the entry hash and no env index (the layout before)."""
    base = f"{prefix}:{{m0}}:"
    pipe = client.pipeline(transaction=False)
    for run_id, env, doc in docs:
        pipe.hset(f"{base}e:{run_id}", mapping={  # the fields accept wrote before
            "snapshot": doc, "env": env, "org": ORG, "status": "QUEUED", "attempts": 0,
            "accepted_ms": int(time.time() * 1000), "materialised": 0,
        })  # fmt: skip
        pipe.rpush(f"{base}q:{env}", run_id)
    pipe.execute()
    per_entry = [f"{base}e:{run_id}" for run_id, _, _ in docs]
    return (usage(client, per_entry) + usage(client, [f"{base}q:{e}" for e in env_ids])) // len(docs)


def sdk_body(i: int) -> bytes:
    """The trigger body the SDK v4 sends for ``tasks.trigger("process-order", payload)`` (bench/trigger.lua's,
    without an idempotency key: the SDK sends none unless asked)."""
    payload = json.dumps({"json": {
        "orderId": f"ord_{i:09d}", "customerId": f"cus_{i * 7919 % 10**8:08d}", "amount": 100 + i % 99900,
        "currency": "EUR", "items": [{"sku": f"SKU-{i % 10**4:04d}", "qty": 1}, {"sku": f"SKU-{i * 3 % 10**4:04d}",
        "qty": 2}], "note": "leave at the door"}}, separators=(",", ":"))  # fmt: skip
    options = {
        "queue": {"name": "orders"}, "concurrencyKey": f"cus_{i % 1000}", "payloadType": "application/super+json",
        "payloadSize": len(payload), "ttl": "1h", "tags": [f"customer_{i % 1000}", "source_api"], "maxAttempts": 3,
        "metadata": {"source": "checkout"}, "maxDuration": 300, "machine": "small-1x",
    }  # fmt: skip
    return json.dumps({"payload": payload, "options": options}).encode()


def measure_storm(buffer, client, n: int) -> tuple[dict[str, float], float]:
    """An SDK storm of ``n`` triggers through the trigger service into ``buffer`` (one env, gate tripped from
    the first trigger): bytes per buffered run of every key under its prefix, by family (``e``, ``s``, ``req``…),
    and the median JSON size of a snapshot."""
    from django.conf import settings

    from runs import trigger
    from runs.auth import EnvContext
    from runs.schemas import TriggerBody

    cfg = settings.MOLLIFIER.model_copy(update={"ENABLED": True, "TRIP_THRESHOLD": 0, "MAX_BUFFERED_PER_ENV": 10**9})
    env = EnvContext(env_id=100, org_id=ORG, env_slug="prod", env_type="PRODUCTION", org_slug="storm", enrolled=True)
    now_ms = int(time.time() * 1000)
    sizes = []
    for i in range(n):
        body = TriggerBody.model_validate_json(sdk_body(i))
        snapshot = trigger.prepare(env, "process-order", body.options, body.payload, now_ms=now_ms + i,
                                   max_payload_bytes=cfg.MAX_PAYLOAD_BYTES, max_metadata_bytes=cfg.MAX_METADATA_BYTES)  # fmt: skip
        result = trigger.trigger(
            env, snapshot, buffer=buffer, cfg=cfg, now_ms=now_ms + i, request_key=str(uuid.uuid4())
        )
        assert result.path == "buffered", result
        if i < 200:
            from runs.snapshot import to_snapshot

            sizes.append(len(to_snapshot(snapshot).encode()))
    families: dict[str, float] = {}
    keys = list(client.scan_iter(match=f"{buffer.prefix}:*", count=10_000))
    for key, used in zip(keys, (usage(client, [key]) for key in keys), strict=True):
        family = key.split(":", 2)[2].split(":", 1)[0]  # <prefix>:{m0}:<family>:…
        families[family] = families.get(family, 0) + used / n
    return families, statistics.median(sizes)


def cpu_us(docs, *, min_bytes: int, repeat: int) -> tuple[float, float]:
    """Median µs of what compression adds in Python: per trigger, ``pack`` and ``created_ms`` (what
    ``Buffer.accept``/``trigger`` do with the JSON); per drained row, decoding the reply bytes as the client
    does (UTF-8, surrogateescape) and ``unpack``."""
    from buffer import stored_snapshot

    texts = [doc for _, _, doc in docs]
    wire = [
        packed if isinstance(packed, bytes) else packed.encode()
        for packed in (stored_snapshot.pack(t, min_bytes=min_bytes) for t in texts)
    ]

    def trigger(text: str) -> None:
        stored_snapshot.pack(text, min_bytes=min_bytes)
        stored_snapshot.created_ms(text, 0)

    def drained(value: bytes) -> None:
        stored_snapshot.unpack(value.decode("utf-8", "surrogateescape"))

    return timed_us(trigger, texts, repeat), timed_us(drained, wire, repeat)


def delete_prefixes(client, prefixes: Sequence[str]) -> None:
    for prefix in prefixes:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=10_000))
        for i in range(0, len(keys), 10_000):
            client.delete(*keys[i : i + 10_000])


def timed_us(fn, items: Sequence, repeat: int) -> float:
    """Median µs per call of ``fn`` over ``repeat`` calls, in batches (timer overhead amortised)."""
    batch = max(1, min(len(items), 50))
    samples = []
    for r in range(max(1, repeat // batch)):
        chunk = [items[(r * batch + j) % len(items)] for j in range(batch)]
        t0 = time.perf_counter()
        for item in chunk:
            fn(item)
        samples.append((time.perf_counter() - t0) / batch * 1e6)
    return statistics.median(samples)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_django()
    import redis
    from django.conf import settings

    from buffer.buffer import Buffer
    from buffer.client import CLIENT_OPTIONS

    client = redis.Redis.from_url(settings.REDIS_URL, **CLIENT_OPTIONS)
    threshold = args.threshold if args.threshold is not None else settings.MOLLIFIER.SNAPSHOT_COMPRESS_MIN_BYTES
    tag = uuid.uuid4().hex[:7]
    # Key names as long as the default KEY_PREFIX's ("mollifier"): names are part of every key's bytes.
    prefixes = {kind: (f"m{tag}{kind[0]}", f"n{tag}{kind[0]}", f"o{tag}{kind[0]}") for kind in SIZES}
    env_ids = list(range(100, 100 + args.envs))
    now_ms = int(time.time() * 1000)
    results = {}
    print(f"{args.entries} entries per size over {args.envs} env(s); bytes = MEMORY USAGE per entry incl. its "
          f"share of queue, env index and shard keys; compression on = SNAPSHOT_COMPRESS_MIN_BYTES={threshold}")  # fmt: skip
    print(f"{'snapshot':>16} | {'old layout B':>12} | {'off B':>6} {'per GiB':>9} | {'on B':>6} {'per GiB':>9} "
          f"{'off/on':>6} | {'trigger µs off/on':>17} | {'drained row µs off/on':>21}")  # fmt: skip
    try:
        for kind in SIZES:
            docs = snapshots(kind, args.entries, env_ids=env_ids, now_ms=now_ms)
            size = statistics.median(len(doc.encode()) for _, _, doc in docs)
            off_prefix, on_prefix, old_prefix = prefixes[kind]
            before = measure_baseline(client, old_prefix, docs, env_ids)
            off = measure_layout(Buffer(client, prefix=off_prefix, shards=1), client, docs, env_ids)
            on = measure_layout(
                Buffer(client, prefix=on_prefix, shards=1, compress_min_bytes=threshold), client, docs, env_ids
            )
            trig_off, row_off = cpu_us(docs, min_bytes=0, repeat=args.repeat)
            trig_on, row_on = cpu_us(docs, min_bytes=threshold, repeat=args.repeat)
            results[kind] = (before, off, on)
            print(f"{kind + f' ({size:.0f} B)':>16} | {before:>12} | {off:>6} {GIB // off:>9} | {on:>6} {GIB // on:>9} "
                  f"{off / on:>6.2f} | {trig_off:>8.1f} {trig_on:>8.1f} | {row_off:>10.1f} {row_on:>10.1f}")  # fmt: skip
            delete_prefixes(client, prefixes[kind])
    finally:
        for group in prefixes.values():
            delete_prefixes(client, group)
    print("µs columns: Python CPU per trigger (pack + created_ms) and per drained row (reply decode + unpack), "
          "medians; the row's JSON parse and everything else are the same either way")  # fmt: skip
    storm = 0.0
    if args.storm:
        storm_prefix = f"m{tag}x"
        try:
            families, size = measure_storm(
                Buffer(client, prefix=storm_prefix, shards=1, compress_min_bytes=threshold), client, args.storm
            )
        finally:
            delete_prefixes(client, [storm_prefix])
        storm = sum(families.values())
        shares = ", ".join(f"{name} {b:.0f}" for name, b in sorted(families.items(), key=lambda kv: -kv[1]) if b >= 1)
        print(f"SDK storm of {args.storm} triggers ({size:.0f} B snapshots): {storm:.0f} B per buffered run, all keys "
              f"({shares})")  # fmt: skip
        req, ttl_s = families.get("req", 0.0), settings.MOLLIFIER.REQUEST_KEY_TTL_S
        print(f"after the drain: {req:.0f} B per trigger of request keys, kept REQUEST_KEY_TTL_S={ttl_s} s "
              f"instead of 24 h ({86400 / ttl_s:.0f}× less request-key memory after a storm)")  # fmt: skip
    before, off, on = results["typical"]
    print(
        f"typical_bytes={on} typical_uncompressed_bytes={off} baseline_bytes={before} ratio={off / on:.2f} "
        f"storm_bytes={storm:.0f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
