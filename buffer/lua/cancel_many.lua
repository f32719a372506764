--[[
cancel_many — flag a chunk of one env's buffered runs cancelled in one call: a bulk cancel's buffered side
(docs/architecture.md#bulk-actions). Per entry it does exactly what cancel.lua does; the drain then writes
CANCELED rows.

KEYS[1…n]  e:<run>   the entry hashes of the chunk (one org, so one shard slot)
ARGV[1]    env id of the caller (tenancy: another env's entry counts as no entry)
ARGV[2]    now_ms (stored as cancelled_at)
ARGV[3]    reason (stored as cancel_reason)

Returns {flagged, already, i_1, i_2, …}:
  flagged  entries that carried no cancel flag and now do (QUEUED, LEASED or DEAD)
  already  entries that were cancelled before (the first cancelled_at and reason stay)
  i_k      KEYS indexes (1-based) of the runs to cancel in Postgres instead: ACKED entries (materialised,
           nothing changed here) and runs with no entry of this env (maybe rows, maybe nothing)
Guarantees: atomic for the chunk; idempotent (a re-run chunk flags nothing twice). The snapshot is not
rewritten. A LEASED entry keeps the flag, so the drain's ack reports it and the row just written is
cancelled (cancel wins, docs/architecture.md#guarantees). O(n) for n keys, n bounded by the caller.
]]
local env, now, reason = ARGV[1], ARGV[2], ARGV[3]
local flagged, already = 0, 0
local elsewhere = {}
for i = 1, #KEYS do
  local f = redis.call('HMGET', KEYS[i], 'env', 'status', 'cancelled_at')
  if not f[1] or f[1] ~= env or f[2] == 'ACKED' then
    table.insert(elsewhere, i)
  elseif f[3] then
    already = already + 1
  else
    redis.call('HSET', KEYS[i], 'cancelled_at', now, 'cancel_reason', reason)
    flagged = flagged + 1
  end
end
local reply = {flagged, already}
for _, i in ipairs(elsewhere) do table.insert(reply, i) end
return reply
