--[[
shard_stats — one shard's numbers for the gauges computed at scrape time (docs/architecture.md#telemetry).

KEYS[1]  orgs            orgs of the shard with queued entries
KEYS[2]  leases          leased run id → lease deadline ms
KEYS[3]  retry           requeued run id → not-before ms
KEYS[4]  dead            run id → dead-letter time ms
KEYS[5]  sweep:counts    env → stale entries (written by the stale sweep)
KEYS[6]  paused:orgs     orgs an operator paused (optional) …
KEYS[7]  paused:envs     … and envs: their queues count in queued, but not in oldest (no age alert pages
                         for what an operator paused on purpose)
ARGV[1]  shard key base "<prefix>:{m<k>}:" (queues are base .. "q:" .. env, envs base .. "org:" .. org .. ":envs")
ARGV[2]  now_ms (a lease is expired when its deadline <= now_ms)

Returns {queued, retrying, leased, expired leases, dead, oldest accepted_ms or -1, stale}:
  queued = entries in the env queues, retrying = entries waiting out a backoff, leased includes the
  expired ones, oldest = the smallest accepted_ms among the queue heads (FIFO: a head is its queue's
  oldest entry) and the first RETRY_SCAN (100) members of retry, the lowest not-before first (an entry
  waiting out a retry is in no queue, and retry is not ordered by accepted_ms), stale = the sum of
  sweep:counts.
Guarantees: read-only; one consistent view of the shard. Cost O(orgs + envs of the shard) O(1) reads
(SCARD/LLEN/LINDEX/HGET) plus at most RETRY_SCAN reads of retry entries, so a scrape never walks a queue
or the whole retry ZSET. When retry holds more than RETRY_SCAN members, oldest may miss an older one
further in (the age is then a lower bound).
]]
local RETRY_SCAN = 100
local orgs, leases, retry, dead, counts = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local paused_orgs, paused_envs = KEYS[6], KEYS[7]
local base, now = ARGV[1], ARGV[2]

local function paused(set, id)
  return set ~= nil and redis.call('SISMEMBER', set, id) == 1
end

local queued, oldest = 0, -1
for _, org in ipairs(redis.call('SMEMBERS', orgs)) do
  for _, env in ipairs(redis.call('SMEMBERS', base .. 'org:' .. org .. ':envs')) do
    local queue = base .. 'q:' .. env
    queued = queued + redis.call('LLEN', queue)
    local head = redis.call('LINDEX', queue, 0)
    if head and not paused(paused_orgs, org) and not paused(paused_envs, env) then
      local accepted = tonumber(redis.call('HGET', base .. 'e:' .. head, 'accepted_ms'))
      if accepted and (oldest < 0 or accepted < oldest) then oldest = accepted end
    end
  end
end

for _, run in ipairs(redis.call('ZRANGE', retry, 0, RETRY_SCAN - 1)) do
  local accepted = tonumber(redis.call('HGET', base .. 'e:' .. run, 'accepted_ms'))
  if accepted and (oldest < 0 or accepted < oldest) then oldest = accepted end
end

local stale = 0
for _, value in ipairs(redis.call('HVALS', counts)) do stale = stale + tonumber(value) end

return {
  queued,
  redis.call('ZCARD', retry),
  redis.call('ZCARD', leases),
  redis.call('ZCOUNT', leases, '-inf', now),
  redis.call('ZCARD', dead),
  oldest,
  stale,
}
