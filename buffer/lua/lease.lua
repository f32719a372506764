--[[
lease — pop up to n entries of one env, FIFO, and mark them in flight (docs/architecture.md#the-redis-buffer, #drain).

KEYS[1]  q:<env>            the env's queue
KEYS[2]  org:<org>:envs     envs of the org with queued entries
KEYS[3]  orgs               orgs of the shard with queued entries
KEYS[4]  leases             run id → lease deadline ms
ARGV[1]  shard key base "<prefix>:{m<k>}:" (entry keys are base .. "e:" .. run)
ARGV[2]  env id
ARGV[3]  org id
ARGV[4]  n, how many to pop (≥ 1)
ARGV[5]  now_ms
ARGV[6]  lease_ms

Returns a flat list {run id, {values…}, run id, {…}, …} in queue order. The values are the entry's fields
in this fixed order (nil for an absent field) — ``buffer.buffer.LEASE_FIELDS`` names them:
  snapshot, env, org, status, attempts, accepted_ms, lease_until_ms, cancelled_at, cancel_reason,
  extra_tags, last_error, materialised
each entry already showing status LEASED and lease_until_ms = now_ms + lease_ms. (Values by position,
not HGETALL's field/value pairs: half the strings to build and parse on the drain's hottest path.)
Guarantees: LPOP and marking are atomic, so two concurrent leases never get the same entry. When the
queue ends up empty the env leaves KEYS[2], and the org leaves KEYS[3] if it has no other queued env
(an env is in its org's set iff its queue is non-empty). An id whose hash is missing or not QUEUED is
dropped from the queue without being returned (no script leaves such an id in a queue).
]]
local queue, org_envs, orgs, leases = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local base, env, org = ARGV[1], ARGV[2], ARGV[3]
local lease_until = string.format('%d', tonumber(ARGV[5]) + tonumber(ARGV[6]))
local STATUS, LEASE_UNTIL = 4, 7 -- positions in the returned values

local out = {}
local deadlines = {} -- ZADD arguments, sent in chunks (Lua's unpack has a stack limit)
local ids = redis.call('LPOP', queue, ARGV[4])
if ids then
  for _, run in ipairs(ids) do
    local entry = base .. 'e:' .. run
    local values = redis.call('HMGET', entry, 'snapshot', 'env', 'org', 'status', 'attempts', 'accepted_ms',
      'lease_until_ms', 'cancelled_at', 'cancel_reason', 'extra_tags', 'last_error', 'materialised')
    if values[STATUS] == 'QUEUED' then
      redis.call('HSET', entry, 'status', 'LEASED', 'lease_until_ms', lease_until)
      values[STATUS], values[LEASE_UNTIL] = 'LEASED', lease_until
      deadlines[#deadlines + 1] = lease_until
      deadlines[#deadlines + 1] = run
      out[#out + 1] = run
      out[#out + 1] = values
    end
  end
end
for i = 1, #deadlines, 1000 do
  redis.call('ZADD', leases, unpack(deadlines, i, math.min(i + 999, #deadlines)))
end
presence_leave(queue, orgs, org_envs, org, env)
return out
