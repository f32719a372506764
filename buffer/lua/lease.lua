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
ARGV[7]  max_bytes: stop before the snapshot bytes taken would pass this (0: no limit); the first entry
         is always taken, so a huge snapshot is leased alone, never stuck
ARGV[8]  mode: "round" (a drain round's lease: stops before an entry marked solo — its last lease
         expired, see reclaim_expired), "solo" (only the queue head, whatever it is) or "all" (no stop)

Returns {solo_waiting, run id, {values…}, run id, {…}, …} in queue order: solo_waiting is 1 when a "round"
lease stopped at a solo entry (the caller leases it alone, after this round's commit), else 0. The values are the entry's fields
in this fixed order (nil for an absent field) — ``buffer.buffer.LEASE_FIELDS`` names them:
  snapshot, env, org, status, attempts, accepted_ms, lease_until_ms, cancelled_at, cancel_reason,
  extra_tags, last_error, materialised, delay_until_ms, metadata, metadata_version
each entry already showing status LEASED and lease_until_ms = now_ms + lease_ms. (Values by position,
not HGETALL's field/value pairs: half the strings to build and parse on the drain's hottest path.)
Guarantees: popping and marking are atomic, so two concurrent leases never get the same entry. A "round"
lease never takes a solo entry, so an entry that may have crashed its last worker cannot take the rest of a
round down with it again; a solo lease takes one entry. When the
queue ends up empty the env leaves KEYS[2], and the org leaves KEYS[3] if it has no other queued env
(an env is in its org's set iff its queue is non-empty); the shard counters follow (queue_moved). The
snapshot is read from base .. "s:" .. run; the byte budget counts its length. An id whose hash is missing or not QUEUED is
dropped from the queue without being returned (no script leaves such an id in a queue).
]]
local queue, org_envs, orgs, leases = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local base, env, org = ARGV[1], ARGV[2], ARGV[3]
local lease_until = string.format('%d', tonumber(ARGV[5]) + tonumber(ARGV[6]))
local n, max_bytes, mode = tonumber(ARGV[4]), tonumber(ARGV[7] or '0'), ARGV[8] or 'all'
local solo_mode = mode == 'solo'
if solo_mode then n = 1 end
local SNAPSHOT, STATUS, LEASE_UNTIL = 1, 4, 7 -- positions in the returned values

local popped = 0
local out = {0}
local deadlines = {} -- ZADD arguments, sent in chunks (Lua's unpack has a stack limit)
local taken, bytes = 0, 0
while taken < n do
  local run = redis.call('LINDEX', queue, 0)
  if not run then break end
  local entry = base .. 'e:' .. run
  local head = redis.call('HMGET', entry, 'status', 'solo')
  if head[1] ~= 'QUEUED' then
    redis.call('LPOP', queue) -- no script leaves such an id in a queue; drop it
    popped = popped + 1
  else
    if head[2] == '1' and mode == 'round' then
      out[1] = 1
      break
    end
    local snap = snapshot_key(base, run)
    local size = redis.call('STRLEN', snap)
    if size == 0 then size = redis.call('HSTRLEN', entry, 'snapshot') end -- an entry written before s:<run>
    if taken > 0 and max_bytes > 0 and bytes + size > max_bytes then break end
    redis.call('LPOP', queue)
    popped = popped + 1
    local values = redis.call('HMGET', entry, 'snapshot', 'env', 'org', 'status', 'attempts', 'accepted_ms',
      'lease_until_ms', 'cancelled_at', 'cancel_reason', 'extra_tags', 'last_error', 'materialised',
      'delay_until_ms', 'metadata', 'metadata_version')
    redis.call('HSET', entry, 'status', 'LEASED', 'lease_until_ms', lease_until)
    values[SNAPSHOT] = redis.call('GET', snap) or values[SNAPSHOT]
    values[STATUS], values[LEASE_UNTIL] = 'LEASED', lease_until
    deadlines[#deadlines + 1] = lease_until
    deadlines[#deadlines + 1] = run
    out[#out + 1] = run
    out[#out + 1] = values
    taken, bytes = taken + 1, bytes + size
  end
end
for i = 1, #deadlines, 1000 do
  redis.call('ZADD', leases, unpack(deadlines, i, math.min(i + 999, #deadlines)))
end
presence_leave(queue, orgs, org_envs, org, env)
if popped > 0 then queue_moved(base, org, env, -popped) end
return out
