--[[
requeue_now — an operator's "requeue now": entries waiting out a retry backoff, dead letters and expired
leases go to the head of their queue at once (docs/runbook.md).

KEYS[1]  leases
KEYS[2]  retry
KEYS[3]  dead
KEYS[4]  orgs
ARGV[1]  shard key base "<prefix>:{m<k>}:"
ARGV[2]  now_ms
ARGV[3…] run ids

Returns {requeued, skipped}: skipped counts ids already queued, leased by a live drainer, acked or missing.
Guarantees: a requeued entry is QUEUED at its queue head with its env and org in the sets (presence_join) and the shard counters following (queue_moved).
A dead letter's attempts are reset (as ``redrive``); a retrying entry's and an expired lease's are kept (an
expired lease counts its attempt, as ``reclaim_expired``). Nothing else changes.
]]
local leases, retry, dead, orgs = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local base, now = ARGV[1], tonumber(ARGV[2])

local requeued, skipped = 0, 0
for i = 3, #ARGV do
  local run = ARGV[i]
  local entry = base .. 'e:' .. run
  local f = redis.call('HMGET', entry, 'status', 'env', 'org')
  local status, env, org = f[1], f[2], f[3]
  local move = false
  if status == 'QUEUED' then
    move = redis.call('ZREM', retry, run) == 1
  elseif status == 'DEAD' then
    redis.call('ZREM', dead, run)
    redis.call('HSET', entry, 'attempts', 0)
    redis.call('HDEL', entry, 'dead_ms')
    move = true
  elseif status == 'LEASED' and tonumber(redis.call('ZSCORE', leases, run) or '0') <= now then
    redis.call('ZREM', leases, run)
    redis.call('HINCRBY', entry, 'attempts', 1)
    redis.call('HSET', entry, 'last_error', 'lease expired', 'solo', 1)
    move = true
  end
  if move then
    redis.call('HSET', entry, 'status', 'QUEUED')
    redis.call('HDEL', entry, 'lease_until_ms')
    redis.call('LPUSH', base .. 'q:' .. env, run)
    presence_join(orgs, base .. 'org:' .. org .. ':envs', org, env)
    queue_moved(base, org, env, 1)
    requeued = requeued + 1
  else
    skipped = skipped + 1
  end
end
return {requeued, skipped}
