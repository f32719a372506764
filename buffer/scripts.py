"""Every Lua script of the buffer, read once from ``buffer/lua/`` and registered on a Redis client.

``register_script`` hashes the source locally; the first call does EVALSHA and, on NOSCRIPT (a restarted
or different server), loads the script and retries — so no SCRIPT LOAD round trip at start-up and no
failure after a Redis restart. Each field of ``Scripts`` is one file; ``tests/buffer/test_scripts_and_keys.py``
fails if a ``.lua`` file has no field here or lacks its contract header.

Every script is registered with the prelude in front of it: the files of ``lua/lib/`` listed in ``LIB``, in
that order (a later file may call an earlier one's functions). ``presence.lua`` keeps the invariant several
scripts keep (an env is in its org's set iff its queue is non-empty); ``snapshot.lua`` names the snapshot's
own key; ``shard_counts.lua`` keeps the shard counters the gauges read; ``env_index.lua`` keeps the env index
run lists page over; ``entry_accept.lua`` writes a new entry (accept, trigger) and calls the three before it;
``gate_trip.lua`` counts a trigger in the gate's window (trip, trigger); ``full_memory.lua`` lets the drain's
scripts run when Redis is at ``maxmemory`` (they free memory); ``drain_kick.lua`` sets a shard's drain mark on an
accept into an idle shard (accept, trigger). Each is written once, there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import redis
from redis.commands.core import Script

LUA_DIR = Path(__file__).resolve().parent / "lua"
LIB = tuple(
    LUA_DIR / "lib" / f"{name}.lua"
    for name in (
        "presence",
        "snapshot",
        "shard_counts",
        "env_index",
        "entry_accept",
        "gate_trip",
        "full_memory",
        "drain_kick",
    )
)
"""The shared Lua files, in registration order (Lua locals must be defined before they are called)."""


@cache
def prelude() -> str:
    """The text every script is registered behind: the ``LIB`` files, concatenated in order."""
    return "".join(path.read_text(encoding="utf-8") for path in LIB)


@cache
def source(name: str) -> str:
    """The text of ``buffer/lua/<name>.lua`` (read once per process)."""
    return (LUA_DIR / f"{name}.lua").read_text(encoding="utf-8")


@cache
def registered_source(name: str) -> str:
    """What is sent to Redis for ``name``: the prelude, then the script's own file."""
    return prelude() + source(name)


@dataclass(frozen=True, slots=True)
class Scripts:
    """The buffer's scripts bound to one client. Field name = file name without ``.lua``."""

    accept: Script
    get: Script
    lease: Script
    ack: Script
    requeue: Script
    promote_due: Script
    reclaim_expired: Script
    release: Script
    dead_letter: Script
    cancel: Script
    append_tags: Script
    reschedule: Script
    set_metadata: Script
    claim: Script
    release_claim: Script
    trip: Script
    trigger: Script  # the buffered trigger in one round trip (runs.trigger)
    env_page: Script  # run lists over buffered entries (Buffer.env_page)
    recount: Script
    find_stale: Script
    find_expired_and_dead: Script
    shard_stats: Script
    candidates: Script
    open_circuit: Script
    redrive: Script
    take: Script
    requeue_now: Script
    top_envs: Script  # operator screens (buffer.operators)
    env_census: Script
    dead_letter_env: Script
    cancel_many: Script  # bulk actions (runs.bulk)
    hold_send: Script  # a running shard task keeps its mark; next_send: its successor or nothing (the kick)
    next_send: Script
    claim_send: Script  # the drain's own writes outside its scripts, runnable at maxmemory (lib/full_memory.lua)
    mark_tick: Script
    take_lock: Script
    count_drained: Script
    heartbeat: Script  # the drain workers' heartbeats (drainer.heartbeat)
    epoch: Script  # the buffer epoch (drainer.epochs)
    beat_lease: Script  # the one beat that ticks (drainer.beat)
    beat_release: Script
    chart_sample: Script  # the dashboard charts' samples (buffer.charts)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(field.name for field in dataclasses.fields(cls))

    @classmethod
    def register(cls, client: redis.Redis) -> Scripts:
        return cls(**{name: client.register_script(registered_source(name)) for name in cls.names()})
