--[[
mark_tick — record when the drain fan-out last ticked (docs/operations.md#liveness), also when the buffer's
Redis is at maxmemory (``lib/full_memory.lua``): a plain SET is refused there, which would stop the fan-out
before it sends a single drain task, and the drain is the one thing that frees memory.

KEYS[1]  fan_out:tick   shard 0's tick stamp
ARGV[1]  now_ms         the tick's time

Returns  nothing.
Guarantees: one fixed-size string, overwritten each tick, so running it at maxmemory cannot grow memory.
]]
full_memory_ok(KEYS[1])
redis.call('SET', KEYS[1], ARGV[1])
