--[[
find_stale — find entries that have waited too long (docs/architecture.md#stale-sweep): either one org's
queued entries, env by env (mode "queues"), or the shard's entries waiting out a retry (mode "retry").

KEYS[1]  mode "queues": org:<org>:envs, envs of the org with queued entries (their queues are
         base .. "q:" .. env); mode "retry": retry, requeued run id → not-before ms
ARGV[1]  shard key base "<prefix>:{m<k>}:" (entry keys are base .. "e:" .. run)
ARGV[2]  now_ms
ARGV[3]  older_than_ms: an entry is stale when now_ms - accepted_ms > older_than_ms
ARGV[4]  max_entries: scan at most this many entries of each queue, from the head (the oldest: FIFO), or
         at most this many members of retry, the lowest not-before first (the longest waiting)
ARGV[5]  mode: "queues" (the default when absent) or "retry"

Returns, mode "queues": a flat list with one group per env of the org, in no particular order:
  {env, stale count, {run id, accepted_ms, attempts, last_error or "", …}, env, count, {…}, …}
  the inner list names every stale entry found (at most max_entries per env); empty when the org has
  no queued env.
Returns, mode "retry": a flat list naming every stale entry found, in not-before order:
  {run id, env, org, accepted_ms, attempts, last_error or "", …} (at most max_entries entries). An entry
  waiting in retry is in no queue, and its env may be in no env set and its org in no org set; the
  entry hash says which env and org it belongs to.
Guarantees: read-only, so a pipelined batch of calls (one per org, one for retry) changes nothing. Cost
is bounded: at most max_entries entry reads per queue, or per retry call, whatever the retry ZSET holds.
The count is a lower bound when a queue (or retry) holds more than max_entries. An id without an entry
hash (no script leaves one) is skipped.
]]
local base, now = ARGV[1], tonumber(ARGV[2])
local older_than, max_entries = tonumber(ARGV[3]), tonumber(ARGV[4])
local mode = ARGV[5] or 'queues'

if mode == 'retry' then
  local found = {}
  for _, run in ipairs(redis.call('ZRANGE', KEYS[1], 0, max_entries - 1)) do
    local f = redis.call('HMGET', base .. 'e:' .. run, 'accepted_ms', 'env', 'org', 'attempts', 'last_error')
    local accepted = tonumber(f[1])
    if accepted and f[2] and now - accepted > older_than then
      found[#found + 1] = run
      found[#found + 1] = f[2]
      found[#found + 1] = f[3] or '0'
      found[#found + 1] = f[1]
      found[#found + 1] = f[4] or '0'
      found[#found + 1] = f[5] or ''
    end
  end
  return found
end
if mode ~= 'queues' then return redis.error_reply('find_stale: unknown mode ' .. tostring(mode)) end

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
