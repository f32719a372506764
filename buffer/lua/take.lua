--[[
take — lease particular entries by run id, wherever they wait, for an operator's "materialise now",
"fail" or "cancel" (docs/runbook.md): the caller then writes their rows and acks them, as a drain round does.

KEYS[1]  leases
KEYS[2]  retry
KEYS[3]  dead
KEYS[4]  orgs
ARGV[1]  shard key base "<prefix>:{m<k>}:"
ARGV[2]  now_ms
ARGV[3]  lease_ms
ARGV[4…] run ids

Returns a flat list {run id, {values…}, …} for the entries taken, with the values of ``lease.lua`` (the
fields named by ``buffer.buffer.LEASE_FIELDS``, status LEASED, lease_until_ms = now_ms + lease_ms).
Guarantees: an entry is taken from its queue (leaving the org/env sets as presence_leave says, the shard
counters as queue_moved says), from retry,
from dead, or from an expired lease; an entry leased by a live drainer (lease not yet expired), acked or
missing is not taken and not returned — someone else has it. Attempts are unchanged.
]]
local leases, retry, dead, orgs = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local base, now = ARGV[1], tonumber(ARGV[2])
local lease_until = string.format('%d', now + tonumber(ARGV[3]))

local out = {}
for i = 4, #ARGV do
  local run = ARGV[i]
  local entry = base .. 'e:' .. run
  local f = redis.call('HMGET', entry, 'status', 'env', 'org')
  local status, env, org = f[1], f[2], f[3]
  local take = false
  if status == 'QUEUED' then
    if redis.call('ZREM', retry, run) == 0 then
      local queue = base .. 'q:' .. env
      local removed = redis.call('LREM', queue, 0, run)
      if removed > 0 then
        presence_leave(queue, orgs, base .. 'org:' .. org .. ':envs', org, env)
        queue_moved(base, org, env, -removed)
      end
    end
    take = true
  elseif status == 'DEAD' then
    redis.call('ZREM', dead, run)
    redis.call('HDEL', entry, 'dead_ms')
    take = true
  elseif status == 'LEASED' then
    local deadline = tonumber(redis.call('ZSCORE', leases, run) or '0')
    take = deadline <= now
  end
  if take then
    redis.call('HSET', entry, 'status', 'LEASED', 'lease_until_ms', lease_until)
    redis.call('ZADD', leases, lease_until, run)
    out[#out + 1] = run
    local values = redis.call('HMGET', entry, 'snapshot', 'env', 'org', 'status', 'attempts', 'accepted_ms',
      'lease_until_ms', 'cancelled_at', 'cancel_reason', 'extra_tags', 'last_error', 'materialised',
      'delay_until_ms', 'metadata', 'metadata_version')
    values[1] = redis.call('GET', snapshot_key(base, run)) or values[1] -- the hash field: written before s:<run>
    out[#out + 1] = values
  end
end
return out
