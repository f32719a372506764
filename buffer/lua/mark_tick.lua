--[[
mark_tick — record when the drain fan-out last ticked (docs/operations.md#liveness) and, if asked, whether this
tick takes the dashboard's chart sample (docs/operations.md#dashboard-charts). It runs when the buffer's Redis
is at maxmemory too (``lib/full_memory.lua``): a plain SET is refused there, which would stop the fan-out
before it sends a single drain task, and the drain is the one thing that frees memory.

KEYS[1]  fan_out:tick   shard 0's tick stamp
KEYS[2]  chart:due      shard 0's chart-sample gate
ARGV[1]  now_ms         the tick's time
ARGV[2]  every_ms       the chart sample interval; 0: no charts, the gate is left alone

Returns  1 if this tick takes the chart sample (it set the gate), else 0.
Guarantees: the stamp is one fixed-size string, overwritten each tick, and the gate one small key that
expires, so running at maxmemory cannot grow memory beyond them; of two ticks in one interval exactly one
gets 1 (SET NX PX).
]]
full_memory_ok(KEYS[1])
redis.call('SET', KEYS[1], ARGV[1])
local every = tonumber(ARGV[2])
if every > 0 and redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', every) then
  return 1
end
return 0
