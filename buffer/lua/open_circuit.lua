--[[
open_circuit — the drain of a shard found Postgres unreachable: back off, doubling with each failure in
a row (docs/architecture.md#postgres-outage-circuit).

KEYS[1]  drain:circuit   HASH: until_ms (no round before), failures (in a row)
ARGV[1]  now_ms
ARGV[2]  base_ms: the first back-off
ARGV[3]  max_ms: the longest back-off

Returns {delay_ms, failures}: delay_ms = min(max_ms, base_ms · 2^(failures − 1)).
Guarantees: the failure count and the deadline change in one atomic step, so two drainers that both
saw the outage (a lock that expired under a stalled holder) count two failures, never lose one. The
hash is deleted by the first round that succeeds (``Buffer.close_circuit``).
]]
full_memory_ok(KEYS[1])  -- the drain frees memory: it runs at maxmemory too (lib/full_memory.lua)
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local delay = math.min(tonumber(ARGV[3]), tonumber(ARGV[2]) * 2 ^ (failures - 1))
redis.call('HSET', KEYS[1], 'until_ms', string.format('%d', tonumber(ARGV[1]) + delay))
return {delay, failures}
