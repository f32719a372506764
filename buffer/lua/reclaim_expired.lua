--[[
reclaim_expired — leases whose deadline has passed were abandoned (worker killed, hung): count the
attempt and make the entries due for retry now (docs/architecture.md#drain).

KEYS[1]  leases    run id → lease deadline ms
KEYS[2]  retry     run id → not-before ms
ARGV[1]  shard key base "<prefix>:{m<k>}:"
ARGV[2]  now_ms (a lease is expired when its deadline <= now_ms)
ARGV[3]  limit: at most this many entries per call

Returns a flat list {run id, attempts after increment, …}, earliest deadline first.
Guarantees: unexpired leases are untouched; each reclaimed entry moves atomically from leases to retry
(not-before = now_ms, status QUEUED, last_error "lease expired", solo 1), so promote_due puts it back at its
queue head. If the original drainer did commit, the second insert is a no-op. ``solo`` marks an entry whose
worker may have died of it (out of memory on a huge snapshot, a crash): a normal lease stops before it and
the drain leases it alone, so it cannot take a round of other tenants' entries down with it again.
]]
full_memory_ok(KEYS[1])  -- the drain frees memory: it runs at maxmemory too (lib/full_memory.lua)
local leases, retry = KEYS[1], KEYS[2]
local base, now = ARGV[1], ARGV[2]

local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, ARGV[3])
local out = {}
for _, run in ipairs(expired) do
  redis.call('ZREM', leases, run)
  local entry = base .. 'e:' .. run
  if redis.call('EXISTS', entry) == 1 then
    local attempts = redis.call('HINCRBY', entry, 'attempts', 1)
    redis.call('HSET', entry, 'status', 'QUEUED', 'last_error', 'lease expired', 'solo', 1)
    redis.call('HDEL', entry, 'lease_until_ms')
    redis.call('ZADD', retry, now, run)
    out[#out + 1] = run
    out[#out + 1] = attempts
  end
end
return out
