"""A hung Celery broker (its Redis SIGSTOPped) must not hold a web worker: a request that sends a task — a bulk
action's — answers within a bound, and the task it could not send is left as a broker outage leaves it
(docs/operations.md#redis-timeouts-and-the-circuit-breaker).

A real gunicorn (tests/live.py) whose ``REDIS_URL`` — the broker and the buffer, as the default deploy has them —
is a redis-server of the test's own. Figures are printed with ``-s`` (``hung-broker:`` lines).
"""

from __future__ import annotations

import signal

import pytest

from runs.models import BulkAction
from runs.tenants import ensure_tenant, issue_api_key
from tests.live import Gunicorn
from tests.redis_servers import redis_server
from tests.runs.test_hung_redis import call

TRIGGER = "/api/v1/tasks/hello/trigger"
BULK = "/api/v1/bulk-actions"
# Before the fix the bulk action's publish waited on the hung broker with no socket timeout: past the client's
# 60 s (gunicorn's 30 s default would have killed the worker). The send's timeout is 1 s; the bound leaves a
# loaded 2-core box room for the request's own Postgres work.
BULK_BOUND_S = 5.0


@pytest.mark.slow
@pytest.mark.single_redis("SIGSTOPs a redis-server of its own")
@pytest.mark.django_db(transaction=True)
def test_a_hung_broker_costs_a_bulk_action_request_a_bounded_time(tmp_path, key_prefix, settings):
    tenant = ensure_tenant("hung-broker-org", "prod", enrol=True)
    secret = issue_api_key(tenant.env)[1]
    with redis_server(tmp_path / "broker-redis") as server:
        settings.REDIS_URL = server.url  # the broker (CELERY_BROKER_URL's default) and the buffer
        live = Gunicorn({"BUFFER_REDIS_URL": "", "MOLLIFIER_ENABLED": "true", "MOLLIFIER_KEY_PREFIX": key_prefix},
                        workers=1, timeout=120)  # fmt: skip
        stopped = False
        try:
            status, run, _ = call(live.url + TRIGGER, secret, {"payload": "{}"})
            assert status == 200, run
            healthy = call(live.url + BULK, secret, {"action": "cancel", "runIds": [run["id"]]})
            assert healthy[0] == 200, healthy  # the broker connection is open and in use, as in the field
            server.proc.send_signal(signal.SIGSTOP)
            stopped = True

            bulk_status, bulk_body, bulk_s = call(live.url + BULK, secret, {"action": "cancel", "runIds": [run["id"]]})
            print(f"\nhung-broker: bulk action answered {bulk_status} in {bulk_s:.3f} s (healthy {healthy[2]:.3f} s)")
            assert bulk_status == 200 and bulk_s < BULK_BOUND_S, (bulk_status, bulk_s, bulk_body)
            # Not sent: the action stays PENDING, as with a broker that refuses (docs/runbook.md#cancel-a-runaway-storm).
            assert BulkAction.objects.get(id=bulk_body["id"]).status == "PENDING"
        finally:
            if stopped:
                server.proc.send_signal(signal.SIGCONT)
            live.stop()
