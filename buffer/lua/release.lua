--[[
release — give leased entries back untouched: Postgres is unreachable, so the round did not count as an
attempt (docs/architecture.md#postgres-outage-circuit).

KEYS[1]  leases
KEYS[2]  orgs
ARGV[1]  shard key base "<prefix>:{m<k>}:"
ARGV[2…] run ids, in the order they were leased

Returns the number of entries released (ids not currently leased are ignored).
Guarantees: each entry goes back to the head of its queue so that, within an env, the given order is
restored ahead of anything accepted meanwhile; attempts are unchanged; status QUEUED; env and org are
(re-)added to the sets; the shard counters follow (queue_moved).
]]
full_memory_ok(KEYS[1])  -- the drain frees memory: it runs at maxmemory too (lib/full_memory.lua)
local leases, orgs = KEYS[1], KEYS[2]
local base = ARGV[1]

local released = 0
for i = #ARGV, 2, -1 do
  local run = ARGV[i]
  if redis.call('ZREM', leases, run) == 1 then
    local entry = base .. 'e:' .. run
    local f = redis.call('HMGET', entry, 'env', 'org')
    local env, org = f[1], f[2]
    if env then
      redis.call('HSET', entry, 'status', 'QUEUED')
      redis.call('HDEL', entry, 'lease_until_ms')
      redis.call('LPUSH', base .. 'q:' .. env, run)
      presence_join(orgs, base .. 'org:' .. org .. ':envs', org, env)
      queue_moved(base, org, env, 1)
      released = released + 1
    end
  end
end
return released
