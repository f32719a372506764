"""The buffer: a thin typed wrapper over the Lua scripts in ``buffer/lua`` (docs/architecture.md#the-redis-buffer).

``Buffer`` is the only door to the buffer's Redis: its client is private, and no package outside
``buffer/`` imports redis (an import-linter contract, ``make lint``). It is composed of one part per caller,
each in a module of its own:

- ``buffer.trigger_side.TriggerSide`` — ``runs/``: accept, trigger, claims, the gate's counter, mutations of
  one buffered run, the run list's pages, bulk cancels;
- ``buffer.drain_side.DrainSide`` — ``drainer/``: the round's candidates, lease / ack / requeue / reclaim /
  promote / release / dead-letter, the outage circuit, the shard lock, the fan-out's sends, the epochs
  (``drain_side.DrainBuffer`` is that contract as a ``Protocol``, which the drain's signatures name);
- ``buffer.operator_side.OperatorSide`` — ``sweep/``, the admin, the gauges: stats, pages, census, switches,
  redrive / take / requeue now, the sweep's state;

over ``buffer.core.BufferCore`` (construction, keys, reading entries back). What the methods take and return is
in ``buffer.values``; the process-wide clients in ``buffer.client``.

All logic that must be atomic lives in the scripts; the sides build keys (through ``buffer.keys``), check
arguments, call one script and parse its reply into dataclasses. Time arrives as ``now_ms``. Redis errors
propagate as ``BufferUnavailable``: the trigger service decides to fail open, the drainer to retry.

Entry life cycle (every transition keeps "env in ``org:<org>:envs`` iff its queue is non-empty, org in
``orgs`` iff it has such an env")::

    accept ─► QUEUED (q:<env>) ─lease─► LEASED (leases) ─ack─► ACKED (grace TTL, then gone)
                  ▲                        │ requeue / reclaim_expired
                  └──promote_due── QUEUED (retry) ◄┘        release ─► back to the queue head
    dead_letter (from any live state) ─► DEAD (dead, kept)
"""

from __future__ import annotations

from buffer.drain_side import DrainSide
from buffer.operator_side import OperatorSide
from buffer.trigger_side import TriggerSide
from buffer.values import BufferUnavailable, NotReplicated

__all__ = ["Buffer", "BufferUnavailable", "NotReplicated"]


class Buffer(TriggerSide, DrainSide, OperatorSide):
    """Typed access to one buffer: the one door every caller goes through (``BufferCore`` says how to make one).

    The errors its methods raise are importable from here as well as from ``buffer.values``."""
