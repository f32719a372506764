--[[
promote_due — requeued entries whose backoff is over go back to the head of their env's queue.

KEYS[1]  retry     run id → not-before ms
KEYS[2]  orgs
ARGV[1]  shard key base "<prefix>:{m<k>}:"
ARGV[2]  now_ms (entries with not-before <= now_ms are due)
ARGV[3]  limit: at most this many entries per call

Returns the number of entries promoted.
Guarantees: due entries leave retry and are pushed to the queue head so that, within an env, the earliest
due is served first and before anything accepted later; their env and org are (re-)added to the sets and the shard counters follow (queue_moved).
An entry requeued with "tail" (its write timed out: requeue_tail 1, cleared here) goes to the queue's tail
instead, earliest due first, behind everything queued: it cannot hold up the entries behind it twice.
An id without a QUEUED hash is dropped from retry.
]]
full_memory_ok(KEYS[1])  -- the drain frees memory: it runs at maxmemory too (lib/full_memory.lua)
local retry, orgs = KEYS[1], KEYS[2]
local base = ARGV[1]

local due = redis.call('ZRANGEBYSCORE', retry, '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])
local promoted = 0
-- Heads latest due first (LPUSH: the earliest ends up first), tails earliest due first (RPUSH).
local done = {}
local function promote(run, push)
  if done[run] then return end
  local entry = base .. 'e:' .. run
  local f = redis.call('HMGET', entry, 'env', 'org', 'status', 'requeue_tail')
  local env, org, status = f[1], f[2], f[3]
  if (f[4] == '1') ~= (push == 'RPUSH') then return end -- the other pass's
  done[run] = true
  redis.call('ZREM', retry, run)
  if f[4] then redis.call('HDEL', entry, 'requeue_tail') end
  if env and status == 'QUEUED' then
    redis.call(push, base .. 'q:' .. env, run)
    presence_join(orgs, base .. 'org:' .. org .. ':envs', org, env)
    queue_moved(base, org, env, 1)
    promoted = promoted + 1
  end
end
for i = 1, #due do promote(due[i], 'RPUSH') end
for i = #due, 1, -1 do promote(due[i], 'LPUSH') end
return promoted
