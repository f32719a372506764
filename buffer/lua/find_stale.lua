--[[
find_stale — count one org's queued entries that have waited too long, env by env (docs/architecture.md#stale-sweep).

KEYS[1]  org:<org>:envs   envs of the org with queued entries (their queues are base .. "q:" .. env)
ARGV[1]  shard key base "<prefix>:{m<k>}:" (entry keys are base .. "e:" .. run)
ARGV[2]  now_ms
ARGV[3]  older_than_ms: an entry is stale when now_ms - accepted_ms > older_than_ms
ARGV[4]  max_entries: scan at most this many entries of each queue, from the head (the oldest: FIFO)

Returns a flat list with one group per env of the org, in no particular order:
  {env, stale count, {run id, accepted_ms, attempts, last_error or "", …}, env, count, {…}, …}
  the inner list names every stale entry found (at most max_entries per env); empty when the org has
  no queued env.
Guarantees: read-only, so a pipelined batch of calls (one per org) changes nothing; the count is a lower
bound when a queue is longer than max_entries. An id without an entry hash (no script leaves one) is
skipped.
]]
local base, now = ARGV[1], tonumber(ARGV[2])
local older_than, max_entries = tonumber(ARGV[3]), tonumber(ARGV[4])

local out = {}
for _, env in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local count, found = 0, {}
  for _, run in ipairs(redis.call('LRANGE', base .. 'q:' .. env, 0, max_entries - 1)) do
    local f = redis.call('HMGET', base .. 'e:' .. run, 'accepted_ms', 'attempts', 'last_error')
    local accepted = tonumber(f[1])
    if accepted and now - accepted > older_than then
      count = count + 1
      found[#found + 1] = run
      found[#found + 1] = f[1]
      found[#found + 1] = f[2] or '0'
      found[#found + 1] = f[3] or ''
    end
  end
  out[#out + 1] = env
  out[#out + 1] = count
  out[#out + 1] = found
end
return out
