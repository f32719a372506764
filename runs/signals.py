"""Run lifecycle events (docs/architecture.md#run-engine). Sent by ``runs.engine`` only, after the row is written.

Every signal is sent with ``sender=TaskRun`` and keyword ``run_id``; ``run_created`` also carries
``snapshot`` and ``buffered``; ``run_cancelled`` carries ``reason``; ``run_failed`` carries ``error``.
The engine's ``emit_event=False`` suppresses them (the drain uses it for rows whose event was already
reported at cancel time).

Two more are hooks, not events: the services that send them know no Celery, and ``runs.tasks`` (imported
by ``RunsConfig.ready``) connects the receivers that queue the work. Both are sent after the commit.
``run_failure_committed`` (``sender=TaskRun``, ``run_id``): a SYSTEM_FAILURE row was written, whatever
``emit_event`` said; its alert is queued. ``bulk_action_created`` (``sender=BulkAction``, ``action_id``):
a bulk action was stored; its task is sent.

``envs_deleted_with_buffered_runs`` (``sender`` the admin class, ``user``, ``org_ids``, ``env_ids``,
``labels``, ``counts``, ``reason``: the operator's, may be empty): the admin deleted orgs or envs, and after
the commit dead-lettered their buffered entries (``{"dead_lettered": n}``) or could not reach Redis (``"redis_unreachable": 1``); ``sweep``
(``SweepConfig.ready``) records it in the audit trail.
"""

from django.dispatch import Signal

run_created = Signal()
run_cancelled = Signal()
run_failed = Signal()
run_failure_committed = Signal()
bulk_action_created = Signal()
envs_deleted_with_buffered_runs = Signal()
