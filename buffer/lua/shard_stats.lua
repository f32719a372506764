--[[
shard_stats — one shard's numbers for the gauges computed at scrape time (docs/architecture.md#telemetry,
#shard-counters).

KEYS[1]  queued          ids in the shard's env queues (the counter every queue-changing script keeps)
KEYS[2]  heads           "<org>:<env>" → accepted_ms of the env's queue head
KEYS[3]  leases          leased run id → lease deadline ms
KEYS[4]  retry           requeued run id → not-before ms
KEYS[5]  dead            run id → dead-letter time ms
KEYS[6]  sweep:counts    env → stale entries (written by the stale sweep)
KEYS[7]  paused:orgs     orgs an operator paused …
KEYS[8]  paused:envs     … and envs: their queues count in queued, but not in oldest (no age alert pages
                         for what an operator paused on purpose)
ARGV[1]  shard key base "<prefix>:{m<k>}:" (entries are base .. "e:" .. run)
ARGV[2]  now_ms (a lease is expired when its deadline <= now_ms)

Returns {queued, retrying, leased, expired leases, dead, oldest accepted_ms or -1, stale, stale env max}:
  queued = the counter KEYS[1], retrying, leased and dead = the ZCARDs of retry, leases and dead (leased
  includes the expired ones), oldest = the smallest accepted_ms among the unpaused envs' queue heads (the
  lowest member of heads whose org and env are not paused) and the first RETRY_SCAN (100) members of
  retry, the lowest not-before first (an entry waiting out a retry is in no queue, and retry is not
  ordered by accepted_ms), stale = the sum of sweep:counts, stale env max = the largest of them (0 when none):
  the sweep counts at most SWEEP_MAX_ENTRIES_PER_ENV per env, so an env at that cap makes stale a lower bound.
Guarantees: read-only; one consistent view of the shard. Cost independent of the number of orgs and envs:
O(1) reads, heads from its lowest member on (past paused envs only: HEADS_CHUNK members a step), at most
RETRY_SCAN reads of retry entries, and one HVALS of sweep:counts (envs with stale entries only). When retry
holds more than RETRY_SCAN members, oldest may miss an older one further in (the age is then a lower bound).
]]
local RETRY_SCAN, HEADS_CHUNK = 100, 100
local queued_key, heads, leases, retry, dead, counts = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local paused_orgs, paused_envs = KEYS[7], KEYS[8]
local base, now = ARGV[1], ARGV[2]

local any_paused = redis.call('SCARD', paused_orgs) + redis.call('SCARD', paused_envs) > 0
local oldest = -1
local at, step = 0, any_paused and HEADS_CHUNK or 1 -- nothing paused: the lowest member is the answer
while oldest < 0 do
  local chunk = redis.call('ZRANGE', heads, at, at + step - 1, 'WITHSCORES')
  if #chunk == 0 then break end
  for i = 1, #chunk, 2 do
    local org, env = string.match(chunk[i], '^([^:]+):(.+)$')
    if not any_paused
      or (redis.call('SISMEMBER', paused_orgs, org) == 0 and redis.call('SISMEMBER', paused_envs, env) == 0) then
      oldest = tonumber(chunk[i + 1])
      break
    end
  end
  at = at + step
end

for _, run in ipairs(redis.call('ZRANGE', retry, 0, RETRY_SCAN - 1)) do
  local accepted = tonumber(redis.call('HGET', base .. 'e:' .. run, 'accepted_ms'))
  if accepted and (oldest < 0 or accepted < oldest) then oldest = accepted end
end

local stale, stale_max = 0, 0
for _, value in ipairs(redis.call('HVALS', counts)) do
  local n = tonumber(value)
  stale = stale + n
  if n > stale_max then stale_max = n end
end

return {
  tonumber(redis.call('GET', queued_key) or '0'),
  redis.call('ZCARD', retry),
  redis.call('ZCARD', leases),
  redis.call('ZCOUNT', leases, '-inf', now),
  redis.call('ZCARD', dead),
  oldest,
  stale,
  stale_max,
}
