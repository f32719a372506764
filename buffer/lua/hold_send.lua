--[[
hold_send — a shard task that took its shard's lock holds the shard's ``drain:sent`` mark while it drains (with
kicks on, docs/architecture.md#kick), so accepts meanwhile send nothing: it, or its successor (``next_send``),
takes what they park. Runs at maxmemory too (``lib/full_memory.lua``): the drain frees memory.

KEYS[1]  drain:sent   the shard's mark
ARGV[1]  ttl_ms       how long the mark outlives a task that dies draining (its shard lock's lifetime)

Returns 1.
Guarantees: the mark exists for ARGV[1] ms from now, whoever set it; a killed task's mark lapses with its
lock, and the fan-out's next tick sends the shard again.
]]
full_memory_ok(KEYS[1])
redis.call('SET', KEYS[1], 1, 'PX', ARGV[1])
return 1
