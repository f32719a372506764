--[[
redrive — put dead-lettered entries back in their env's queue for another round of attempts
(docs/architecture.md#drain-outcomes: a dead letter is never the end).

KEYS[1]  dead      run id → dead-letter time ms
KEYS[2]  orgs
ARGV[1]  shard key base "<prefix>:{m<k>}:"
ARGV[2]  now_ms (stored as redriven_ms)
ARGV[3]  limit: at most this many entries per call
ARGV[4]  env id to redrive only that env's dead letters, or "" for any env
ARGV[5…] optional run ids: only these (else the longest-dead first, from KEYS[1])

Returns {redriven, skipped}: skipped counts the given or listed ids that were not DEAD any more (already
redriven, acked, or gone) — someone got there first.
Guarantees: each redriven entry leaves dead, gets status QUEUED with attempts 0 (its last_error is kept
for operators, with redriven_ms), goes to the head of its env's queue (it has waited longest) and its
env and org join the sets (presence_join) and the shard counters follow (queue_moved). Nothing else changes; an entry that is not DEAD is untouched.
]]
local dead, orgs = KEYS[1], KEYS[2]
local base, now, limit, only_env = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]

local ids = {}
if #ARGV > 4 then
  for i = 5, #ARGV do ids[#ids + 1] = ARGV[i] end
else
  -- With an env filter, look further than ``limit`` (other envs' letters are skipped, not counted).
  local scan = only_env == '' and limit or -1
  ids = redis.call('ZRANGE', dead, 0, scan == -1 and -1 or scan - 1)
end

local redriven, skipped = 0, 0
for _, run in ipairs(ids) do
  if redriven >= limit then break end
  local entry = base .. 'e:' .. run
  local f = redis.call('HMGET', entry, 'status', 'env', 'org')
  local status, env, org = f[1], f[2], f[3]
  if only_env == '' or env == only_env then
    if status == 'DEAD' then
      redis.call('ZREM', dead, run)
      redis.call('HSET', entry, 'status', 'QUEUED', 'attempts', 0, 'redriven_ms', now)
      redis.call('HDEL', entry, 'dead_ms', 'lease_until_ms')
      local queue = base .. 'q:' .. env
      redis.call('LPUSH', queue, run)
      presence_join(orgs, base .. 'org:' .. org .. ':envs', org, env)
      queue_moved(base, org, env, 1)
      redriven = redriven + 1
    else
      redis.call('ZREM', dead, run) -- a stale member (no DEAD hash behind it) is tidied away
      skipped = skipped + 1
    end
  end
end
return {redriven, skipped}
