"""Run lifecycle events (docs/architecture.md#run-engine). Sent by ``runs.engine`` only, after the row is written.

Every signal is sent with ``sender=TaskRun`` and keyword ``run_id``; ``run_created`` also carries
``snapshot`` and ``buffered``; ``run_cancelled`` carries ``reason``; ``run_failed`` carries ``error``.
The engine's ``emit_event=False`` suppresses them (the drain uses it for rows whose event was already
reported at cancel time).
"""

from django.dispatch import Signal

run_created = Signal()
run_cancelled = Signal()
run_failed = Signal()
