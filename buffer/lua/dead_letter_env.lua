--[[
dead_letter_env — dead-letter the live entries of one env whose rows are going away (an operator deleted
the env, or its org, in the admin): they are kept for operators with the reason, never dropped
(docs/architecture.md#operator-admin, #guarantees). Called repeatedly, each call bounded by limit.

KEYS[1]  q:<env>           the env's queue
KEYS[2]  org:<org>:envs
KEYS[3]  orgs
KEYS[4]  leases            leased run id → lease deadline ms
KEYS[5]  retry             requeued run id → not-before ms
KEYS[6]  dead              run id → dead-letter time ms
ARGV[1]  shard key base "<prefix>:{m<k>}:" (entries are base .. "e:" .. run)
ARGV[2]  env id
ARGV[3]  org id
ARGV[4]  now_ms (stored as dead_ms and the dead score)
ARGV[5]  reason (stored as last_error)
ARGV[6]  limit (≥ 1): at most this many entries are popped from the queue per call, and, once the queue is
         empty, at most this many members of retry and of leases are examined
ARGV[7]  retry offset: the rank in retry where this call's scan starts (0 on the first call), -1 when done
ARGV[8]  leases offset: the same for leases

Returns {dead_lettered, queue_left, retry_next, leases_next}: how many entries this call made DEAD, the
queue's length afterwards, and the offsets to pass to the next call (-1: that set has been examined to its
end). The caller loops until queue_left == 0 and both offsets are -1. retry and leases are scanned only
once the queue is empty, so an env with a long queue costs limit pops per call and nothing more.
Guarantees: each entry it moves ends exactly as dead_letter leaves one — out of its queue, retry or leases,
status DEAD, dead_ms, last_error = reason, no lease deadline, no TTL, in dead — and the env leaves its
org's set (and the org the shard's) once its queue is empty (presence_leave); the shard counters follow
(queue_moved). Entries of other envs, and
entries already DEAD or ACKED, are untouched. A member of retry or leases whose hash is missing is left
alone (it is not this script's to tidy). Entries that arrive while the caller loops are dead-lettered by
a later call if they land in the queue before it empties, else by the drain (a missing env is fatal).
]]
local queue, org_envs, orgs, leases, retry, dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local base, env, org, now, reason = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local limit, retry_at, leases_at = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])

local moved = 0
local function bury(run)
  local entry = base .. 'e:' .. run
  local status = redis.call('HGET', entry, 'status')
  if not status or status == 'DEAD' or status == 'ACKED' then return end
  redis.call('HSET', entry, 'status', 'DEAD', 'dead_ms', now, 'last_error', reason)
  redis.call('HDEL', entry, 'lease_until_ms')
  redis.call('PERSIST', entry)
  redis.call('PERSIST', snapshot_key(base, run))
  redis.call('ZADD', dead, now, run)
  moved = moved + 1
end

local popped = redis.call('LPOP', queue, limit) or {}
for _, run in ipairs(popped) do bury(run) end
if #popped > 0 then
  presence_leave(queue, orgs, org_envs, org, env)
  queue_moved(base, org, env, -#popped)
end
local queue_left = redis.call('LLEN', queue)

-- Examine up to limit members of a ZSET from rank ``at``; returns the next rank, or -1 at its end.
local function sweep_set(set_key, at)
  if at < 0 then return -1 end
  local members = redis.call('ZRANGE', set_key, at, at + limit - 1)
  local kept = 0
  for _, run in ipairs(members) do
    if redis.call('HGET', base .. 'e:' .. run, 'env') == env then
      redis.call('ZREM', set_key, run)
      bury(run)
    else
      kept = kept + 1
    end
  end
  if #members < limit then return -1 end
  return at + kept
end

if queue_left == 0 then
  retry_at = sweep_set(retry, retry_at)
  leases_at = sweep_set(leases, leases_at)
end
return {moved, queue_left, retry_at, leases_at}
