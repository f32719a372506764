--[[
find_expired_and_dead — the shard's abandoned leases and dead letters, for the stale sweep (docs/architecture.md#stale-sweep).

KEYS[1]  leases   leased run id → lease deadline ms
KEYS[2]  dead     run id → dead-letter time ms
ARGV[1]  shard key base "<prefix>:{m<k>}:" (entry keys are base .. "e:" .. run)
ARGV[2]  now_ms (a lease is expired when its deadline <= now_ms, as in reclaim_expired)
ARGV[3]  limit: list at most this many of each kind, the longest-waiting first

Returns {expired total, dead total, expired list, dead list}; each list is flat:
  {run id, env, org, accepted_ms, attempts, last_error or "", …}
Guarantees: read-only. Totals count every member, the lists at most ARGV[3]. Members whose entry hash is
missing are left out of the lists (not of the totals).
]]
local leases, dead = KEYS[1], KEYS[2]
local base, now, limit = ARGV[1], ARGV[2], ARGV[3]

local function describe(ids)
  local out = {}
  for _, run in ipairs(ids) do
    local f = redis.call('HMGET', base .. 'e:' .. run, 'env', 'org', 'accepted_ms', 'attempts', 'last_error')
    if f[1] then
      out[#out + 1] = run
      out[#out + 1] = f[1]
      out[#out + 1] = f[2] or '0'
      out[#out + 1] = f[3] or '0'
      out[#out + 1] = f[4] or '0'
      out[#out + 1] = f[5] or ''
    end
  end
  return out
end

local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, limit)
local dead_ids = redis.call('ZRANGE', dead, 0, tonumber(limit) - 1)
return {
  redis.call('ZCOUNT', leases, '-inf', now),
  redis.call('ZCARD', dead),
  describe(expired),
  describe(dead_ids),
}
