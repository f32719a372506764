--[[
cancel — flag a buffered run as cancelled; the drain then writes a CANCELED row (docs/architecture.md#reads-and-mutations-of-buffered-runs, #guarantees).

KEYS[1]  e:<run>   entry hash
ARGV[1]  env id of the caller (tenancy: another env's run is NOT_FOUND)
ARGV[2]  now_ms (stored as cancelled_at)
ARGV[3]  reason (stored as cancel_reason)

Returns {status, cancelled_at}:
  {"QUEUED", ms}     flag set (or already set); the drain will write the CANCELED row
  {"LEASED", ms}     flag set, but a drainer holds the entry: the caller waits for the row and cancels it
  {"DEAD", ms}       flag set; the entry waits for an operator
  {"ACKED", ""}      already materialised: nothing changed, the caller cancels the Postgres row
  {"NOT_FOUND", ""}  no such entry in this env
Guarantees: idempotent — a second cancel keeps the first cancelled_at and reason. The snapshot is not
rewritten. Because the flag stays on a LEASED entry, a lease that expires and is reclaimed still ends
CANCELED (cancel wins).
]]
local entry = KEYS[1]
local f = redis.call('HMGET', entry, 'env', 'status', 'cancelled_at')
local env, status, cancelled_at = f[1], f[2], f[3]
if not env or env ~= ARGV[1] then return {'NOT_FOUND', ''} end
if status == 'ACKED' then return {'ACKED', ''} end
if not cancelled_at then
  cancelled_at = ARGV[2]
  redis.call('HSET', entry, 'cancelled_at', cancelled_at, 'cancel_reason', ARGV[3])
end
return {status, cancelled_at}
