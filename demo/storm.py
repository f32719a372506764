"""A trigger storm over the real HTTP API, with live progress: the main job of ``make demo``.

Three tenants fire at once: ``storm`` (enrolled) bursts far past the gate's trip threshold, ``calm``
(enrolled) triggers at a steady trickle, ``legacy`` (not enrolled) bursts too but always passes straight
through to Postgres. While the storm runs and the drain catches up, a progress line shows what was sent,
what sits in the buffer and what has become rows; the summary then checks that every answered run id has
exactly one row.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from statistics import median

from django.db.models import Count

from buffer.buffer import Buffer
from mollifier_project.clock import now_ms
from runs.models import RunStatus, TaskRun

Say = Callable[[str], None]
TASK = "storm-task"


@dataclass
class Tenant:
    name: str
    env_id: int
    org_id: int
    secret: str
    runs: int
    rate_per_s: float | None = None  # None: as fast as possible
    ids: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class Totals:
    sent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, n: int = 1) -> None:
        with self.lock:
            self.sent += n


def _fire(port: int, tenant: Tenant, totals: Totals, share: range) -> None:
    """One keep-alive connection sending ``share`` triggers for ``tenant`` (paced if it has a rate)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {tenant.secret}", "Content-Type": "application/json"}
    start = time.monotonic()
    for i in share:
        if tenant.rate_per_s:
            delay = start + (i - share.start) / tenant.rate_per_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        body = json.dumps({"payload": json.dumps({"json": {"i": i}}), "options": {"tags": [tenant.name]}})
        for attempt in range(5):
            try:
                conn.request("POST", f"/api/v1/tasks/{TASK}/trigger", body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                if attempt == 4:
                    tenant.errors.append(str(exc))
                continue
            if response.status == 200:
                tenant.ids.append(json.loads(data)["id"])
            elif response.status == 429:  # backpressure: honour x-ratelimit-reset, as the SDK does
                reset_ms = int(response.getheader("x-ratelimit-reset") or 0)
                time.sleep(max(0.05, reset_ms / 1000 - time.time()))
                continue
            else:
                tenant.errors.append(f"{response.status} {data[:200]!r}")
            break
        totals.add()
    conn.close()


def fire(port: int, tenants: list[Tenant], *, connections: int = 12) -> tuple[threading.Thread, Totals]:
    """Start firing in the background; returns the thread (join it) and the live counter."""
    totals = Totals()

    def run() -> None:
        jobs = []
        for tenant in tenants:
            n = 1 if tenant.rate_per_s else max(1, connections * tenant.runs // sum(t.runs for t in tenants))
            step = -(-tenant.runs // n)
            jobs += [(tenant, range(k, min(k + step, tenant.runs))) for k in range(0, tenant.runs, step)]
        with ThreadPoolExecutor(len(jobs)) as pool:
            for tenant, share in jobs:
                pool.submit(_fire, port, tenant, totals, share)

    thread = threading.Thread(target=run, name="storm", daemon=True)
    thread.start()
    return thread, totals


def buffered_depth(buffer: Buffer) -> int:
    """Entries waiting (queued or retrying) or in flight (leased), over every shard."""
    return sum(s.depth + s.leased for s in buffer.shard_stats(now_ms=now_ms()))


def rows_of(tenants: list[Tenant]) -> int:
    return TaskRun.objects.filter(env_id__in=[t.env_id for t in tenants]).count()


def watch(
    say: Say,
    thread: threading.Thread,
    totals: Totals,
    tenants: list[Tenant],
    buffer: Buffer,
    *,
    rows_before: int,
    timeout_s: float,
) -> float:
    """Print progress every second until the storm is sent and fully drained. Returns seconds."""
    start = time.monotonic()
    env_ids = [t.env_id for t in tenants]
    expected = sum(t.runs for t in tenants)
    last_rows, last_t = 0, start
    while True:
        time.sleep(1.0)
        now = time.monotonic()
        rows = TaskRun.objects.filter(env_id__in=env_ids).count() - rows_before  # this storm's rows only
        depth = buffered_depth(buffer)
        rate = (rows - last_rows) / max(now - last_t, 1e-6)
        last_rows, last_t = rows, now
        say(
            f"  t={now - start:5.1f}s  sent {totals.sent:>6}/{expected}  in buffer {depth:>6}  "
            f"rows {rows:>6}  ({rate:,.0f} rows/s)"
        )
        answered = sum(len(t.ids) for t in tenants)
        if not thread.is_alive() and depth == 0 and rows >= answered:
            return now - start
        if now - start > timeout_s:
            say(f"  gave up waiting after {timeout_s:.0f}s (is the drainer enabled?)")
            return now - start


def summarise(say: Say, tenants: list[Tenant], elapsed_s: float) -> bool:
    """Check exactly-once and print per-tenant figures. True when nothing was lost or doubled."""
    ok = True
    say(
        f"\n  {'tenant':<8} {'answered':>8} {'rows':>6} {'buffered':>8} {'direct':>6} {'p50 ms':>7} {'p99 ms':>7}  errors"
    )
    for t in tenants:
        rows = TaskRun.objects.filter(id__in=t.ids)
        found = rows.count()
        buffered = rows.filter(buffered=True).count()
        dwell = sorted(
            (r - c).total_seconds() * 1000
            for r, c in rows.filter(buffered=True).values_list("materialised_at", "created_at")
        )
        p50 = f"{median(dwell):.0f}" if dwell else "-"
        p99 = f"{dwell[min(len(dwell) - 1, int(len(dwell) * 0.99))]:.0f}" if dwell else "-"
        say(
            f"  {t.name:<8} {len(t.ids):>8} {found:>6} {buffered:>8} {found - buffered:>6} {p50:>7} {p99:>7}  {len(t.errors)}"
        )
        if found != len(set(t.ids)) or len(set(t.ids)) != len(t.ids) or t.errors:
            ok = False
    all_ids = [i for t in tenants for i in t.ids]
    dupes = TaskRun.objects.filter(id__in=all_ids).values("id").annotate(n=Count("id")).filter(n__gt=1).count()
    failed = TaskRun.objects.filter(id__in=all_ids, status=RunStatus.SYSTEM_FAILURE).count()
    total = len(all_ids)
    say(
        f"\n  {total} triggers answered in {elapsed_s:.1f}s end to end; rows for {TaskRun.objects.filter(id__in=all_ids).count()}"
        f" of them; duplicates {dupes}; SYSTEM_FAILURE {failed}"
    )
    ok = ok and dupes == 0 and failed == 0
    say("  every answered trigger became exactly one row" if ok else "  MISMATCH: see the table above")
    return ok
