--[[
env_census — how many entries some envs of one org have in the buffer, for the admin's deletion warning
(docs/architecture.md#operator-admin: deleting an env or org never drops its buffered runs silently).

KEYS[1]  retry     requeued run id → not-before ms
KEYS[2]  leases    leased run id → lease deadline ms
KEYS[3]  dead      run id → dead-letter time ms
ARGV[1]  shard key base "<prefix>:{m<k>}:" (queues are base .. "q:" .. env, entries base .. "e:" .. run)
ARGV[2]  scan: at most this many members of each of retry, leases and dead are examined (≥ 1)
ARGV[3…] env ids (all of the same org, hence of this shard)

Returns {complete, queued, retrying, leased, dead, queued, retrying, leased, dead, …}: complete is 1 when
every member of retry, leases and dead was examined (the counts are exact), else 0 (the retrying, leased
and dead counts are then lower bounds); then four counts per env, in argument order. queued is the env
queue's length (always exact).
Guarantees: read-only, one consistent view. Cost O(envs) LLENs plus at most 3 × scan ZRANGE members and
one HGET each, whatever the size of the queues.
]]
local retry, leases, dead = KEYS[1], KEYS[2], KEYS[3]
local base, scan = ARGV[1], tonumber(ARGV[2])

local wanted = {}
for i = 3, #ARGV do wanted[ARGV[i]] = {0, 0, 0} end

local complete = 1
local function tally(set_key, slot)
  if redis.call('ZCARD', set_key) > scan then complete = 0 end
  for _, run in ipairs(redis.call('ZRANGE', set_key, 0, scan - 1)) do
    local counts = wanted[redis.call('HGET', base .. 'e:' .. run, 'env') or '']
    if counts then counts[slot] = counts[slot] + 1 end
  end
end
tally(retry, 1)
tally(leases, 2)
tally(dead, 3)

local out = {complete}
for i = 3, #ARGV do
  local counts = wanted[ARGV[i]]
  out[#out + 1] = redis.call('LLEN', base .. 'q:' .. ARGV[i])
  out[#out + 1] = counts[1]
  out[#out + 1] = counts[2]
  out[#out + 1] = counts[3]
end
return out
