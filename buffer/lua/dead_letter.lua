--[[
dead_letter — an entry that cannot even become a SYSTEM_FAILURE row is parked for operators, never
deleted (docs/architecture.md#drain, #guarantees).

KEYS[1]  leases
KEYS[2]  retry
KEYS[3]  dead      run id → dead-letter time ms
KEYS[4]  orgs
ARGV[1]  shard key base "<prefix>:{m<k>}:"
ARGV[2]  run id
ARGV[3]  now_ms
ARGV[4]  reason (stored as last_error)

Returns 1 if the entry became DEAD, 0 if it is missing, already DEAD or already ACKED.
Guarantees: the entry leaves leases, retry or its queue (keeping the org/env sets equal to queue
presence and the shard counters exact; it stays in its env index), gets status DEAD, dead_ms and last_error, is added to dead, and has no TTL.
]]
full_memory_ok(KEYS[1])  -- the drain frees memory: it runs at maxmemory too (lib/full_memory.lua)
local leases, retry, dead, orgs = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local base, run, now = ARGV[1], ARGV[2], ARGV[3]
local entry = base .. 'e:' .. run

local f = redis.call('HMGET', entry, 'status', 'env', 'org')
local status, env, org = f[1], f[2], f[3]
if not status or status == 'DEAD' or status == 'ACKED' then return 0 end

if redis.call('ZREM', leases, run) == 0 and redis.call('ZREM', retry, run) == 0 then
  local queue = base .. 'q:' .. env
  local removed = redis.call('LREM', queue, 0, run)
  if removed > 0 then
    presence_leave(queue, orgs, base .. 'org:' .. org .. ':envs', org, env)
    queue_moved(base, org, env, -removed)
  end
end
redis.call('HSET', entry, 'status', 'DEAD', 'dead_ms', now, 'last_error', ARGV[4])
redis.call('HDEL', entry, 'lease_until_ms')
redis.call('PERSIST', entry)
redis.call('PERSIST', snapshot_key(base, run))
redis.call('ZADD', dead, now, run)
return 1
