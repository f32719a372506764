--[[
reschedule — give a buffered, delayed run a new delay without rewriting its snapshot (docs/architecture.md#reads-and-mutations-of-buffered-runs).

KEYS[1]  e:<run>   entry hash
ARGV[1]  env id of the caller (tenancy: another env's run is NOT_FOUND)
ARGV[2]  the new delay_until in epoch ms (stored as delay_until_ms; the drain writes the row with it)

Returns {status}:
  {"QUEUED"} / {"DEAD"}  delay_until_ms set; the drain (or a redrive) writes the row with it
  {"LEASED"}             nothing written: a drainer holds the entry, the caller waits for the row and reschedules that
  {"ACKED"}              already materialised: nothing changed, the caller reschedules the Postgres row
  {"NOT_FOUND"}          no such entry in this env
Guarantees: the field is written only while no drainer holds the entry, so the row a drain writes has either
the old delay (and the caller then changes the row) or the new one — never a delay the caller was told
about and the row lacks. Whether the run is delayed at all is the caller's check (it reads the snapshot).
]]
local entry = KEYS[1]
local f = redis.call('HMGET', entry, 'env', 'status')
local env, status = f[1], f[2]
if not env or env ~= ARGV[1] then return {'NOT_FOUND'} end
if status == 'QUEUED' or status == 'DEAD' then
  redis.call('HSET', entry, 'delay_until_ms', ARGV[2])
end
return {status}
