"""An SDK storm across hosts (docs/operations.md#deploying-on-several-hosts): the official SDK (tests/sdk/sdk.mjs,
Node processes in the root namespace) triggers against gunicorn on the web host while two drain workers and
beat run on hosts of their own, every process 1 ms of round trip away from Redis and from Postgres. Every
answered run becomes exactly one row."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections import Counter

import pytest

from runs.models import TaskRun
from runs.tenants import ensure_tenant, issue_api_key
from tests.drainer.processes import wait_until
from tests.hosts.harness import HostGunicorn
from tests.sdk.harness import HARNESS, command

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

RTT_MS = 1.0
ORGS = 2
NODE_PROCESSES = 4  # at once
TRIGGERS_EACH = 100
DRAIN_TIMEOUT_S = 60


def test_sdk_storm_across_hosts_at_1_ms_becomes_exactly_one_row_per_answered_run(start_cluster, links, tmp_path):
    assert (HARNESS / "node_modules").exists(), "the SDK is not installed: run `npm ci` in tests/sdk (make test does)"
    cluster, buffer = start_cluster(RTT_MS)
    tenants = [ensure_tenant(f"hosts-org-{i}", "prod", enrol=True) for i in range(ORGS)]
    secrets = [issue_api_key(t.env)[1] for t in tenants]
    web = HostGunicorn(
        links,
        {**cluster.mollifier_env(), "MOLLIFIER_ENABLED": "true", "MOLLIFIER_TRIP_THRESHOLD": "0",
         "PACKETS_ROOT": str(tmp_path / "packets")},
        log=tmp_path / "web.log",
    )  # fmt: skip
    try:
        workers = [cluster.start_worker("drain1"), cluster.start_worker("drain2"), cluster.start_beat()]
        cluster.wait_ready(*workers, timeout=60)
        started = time.monotonic()
        procs = []
        for i in range(NODE_PROCESSES):
            env = {k: v for k, v in os.environ.items() if not k.startswith(("TRIGGER_", "VERCEL_"))}
            env.update(MOLLIFIER_URL=web.url, MOLLIFIER_KEY=secrets[i % ORGS])
            argv = command("triggerMany", task="hosts-storm", count=TRIGGERS_EACH, options={"tags": [f"p{i}"]},
                            retry=False)  # fmt: skip
            argv[0] = shutil.which("node") or "node"
            procs.append(subprocess.Popen(argv, cwd=HARNESS, env=env, stdout=subprocess.PIPE, text=True))
        outs = [json.loads(p.communicate(timeout=180)[0].strip().splitlines()[-1]) for p in procs]
        fire_s = time.monotonic() - started
        assert all(o["ok"] for o in outs), [o for o in outs if not o["ok"]][:2]
        ids = [run_id for o in outs for run_id in o["result"]]
        total = NODE_PROCESSES * TRIGGERS_EACH
        wait_until(
            lambda: TaskRun.objects.filter(id__in=ids).count() == total and not any(buffer.shard_has_work()),
            timeout=DRAIN_TIMEOUT_S, interval=0.2, what=f"{total} rows",
        )  # fmt: skip
        drained_s = time.monotonic() - started - fire_s
    finally:
        web.stop()
    answers = web.answers()
    created = Counter(run_id for report in cluster.drain_reports() for run_id in report["created"])
    by_host = Counter(report["name"] for report in cluster.drain_reports() if report["created"])
    print(
        f"\nhosts: SDK storm at {RTT_MS} ms RTT: {total} triggers from {NODE_PROCESSES} Node processes answered in "
        f"{fire_s:.1f} s ({total / fire_s:.0f}/s; HTTP answers {dict(answers)}: a 503 is retried by the SDK); drained {drained_s:.1f} s later; drain tasks that wrote rows per "
        f"host {dict(by_host)}; bytes through the web host's Redis link {links.proxy.stats('web-redis')['bytes']:,}"
    )
    assert len(ids) == len(set(ids)) == total  # every answer a distinct run
    assert set(TaskRun.objects.filter(env__in=[t.env for t in tenants]).values_list("id", flat=True)) == set(ids)
    assert TaskRun.objects.filter(id__in=ids, buffered=True).count() == total  # all went through the buffer
    assert max(created.values()) == 1 and sum(created.values()) == total  # each row written once
    assert Counter(tuple(tags) for tags in TaskRun.objects.filter(id__in=ids).values_list("tags", flat=True)) == {
        (f"p{i}",): TRIGGERS_EACH for i in range(NODE_PROCESSES)
    }
