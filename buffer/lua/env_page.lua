--[[
env_page — one page of an env's buffered runs from a cursor, newest first going down (the next page) or
oldest first going up (the previous page), for a run list that merges them with the Postgres rows
(docs/architecture.md#run-list).

KEYS[1]  ix:<env>          the env's index (members: 15-digit created_ms .. run id, every score 0)
ARGV[1]  shard key base "<prefix>:{m<k>}:" (entries are base .. "e:" .. run, snapshots base .. "s:" .. run)
ARGV[2]  cursor: the index member to start strictly below ("down") or above ("up"), or "" for the newest
         (down) / the oldest (up)
ARGV[3]  limit (≥ 1): at most this many entries are returned
ARGV[4]  "1" to return each entry's snapshot (as stored, plain or compressed: buffer/ decodes it), "0" to leave it out
ARGV[5]  "down" (newest first) or "up" (oldest first)

Returns a flat list {run id, created_ms, {values…}, …}, by (created_ms, run id) descending going down, ascending going up; the values
are those of ``lease.lua`` (``buffer.buffer.LEASE_FIELDS``; snapshot nil when ARGV[4] is "0").
Guarantees: read-only. ZRANGE … BYLEX [REV] from the cursor: O(log N + examined), however many entries the
env holds, and a cursor stays valid when entries drain between pages (it is a position, not a member).
A member whose hash is gone (no script leaves one) is skipped; at most 4 × limit + 100 members are examined,
so a page can come back short only when that many were skipped.
]]
local index = KEYS[1]
local base, cursor, limit, with_snapshot = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4] == '1'
local down = ARGV[5] ~= 'up'
local budget = 4 * limit + 100

local out, found = {}, 0
local from = cursor == '' and (down and '+' or '-') or '(' .. cursor
local to = down and '-' or '+'
while found < limit and budget > 0 do
  local want = math.min(limit - found, budget)
  local members
  if down then
    members = redis.call('ZRANGE', index, from, to, 'BYLEX', 'REV', 'LIMIT', 0, want)
  else
    members = redis.call('ZRANGE', index, from, to, 'BYLEX', 'LIMIT', 0, want)
  end
  if #members == 0 then break end
  budget = budget - #members
  for _, member in ipairs(members) do
    local run = string.sub(member, 16)
    local values = redis.call('HMGET', base .. 'e:' .. run, 'snapshot', 'env', 'org', 'status', 'attempts',
      'accepted_ms', 'lease_until_ms', 'cancelled_at', 'cancel_reason', 'extra_tags', 'last_error', 'materialised',
      'delay_until_ms', 'metadata', 'metadata_version')
    if values[2] then
      if with_snapshot then
        values[1] = redis.call('GET', base .. 's:' .. run) or values[1]
      else
        values[1] = false
      end
      out[#out + 1] = run
      out[#out + 1] = string.sub(member, 1, 15)
      out[#out + 1] = values
      found = found + 1
    end
  end
  from = '(' .. members[#members]
end
return out
