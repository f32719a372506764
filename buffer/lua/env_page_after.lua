--[[
env_page_after — one page of an env's buffered runs going up from a cursor (oldest first): what a run
list's ``page[before]`` (the previous page) needs; env_page.lua is the same walk downwards
(docs/architecture.md#run-list).

KEYS[1]  ix:<env>          the env's index (members: 15-digit created_ms .. run id, every score 0)
ARGV[1]  shard key base "<prefix>:{m<k>}:" (entries are base .. "e:" .. run, snapshots base .. "s:" .. run)
ARGV[2]  cursor: the index member to start strictly above, or "" for the oldest
ARGV[3]  limit (≥ 1): at most this many entries are returned
ARGV[4]  "1" to return each entry's snapshot, "0" to leave it out

Returns a flat list {run id, created_ms, {values…}, …}, by (created_ms, run id) ascending; the values are
those of ``lease.lua`` (``buffer.buffer.LEASE_FIELDS``; snapshot nil when ARGV[4] is "0").
Guarantees: read-only. ZRANGE … BYLEX from the cursor: O(log N + examined); at most 4 × limit + 100
members are examined (a member whose hash is gone is skipped), as in env_page.lua.
]]
local index = KEYS[1]
local base, cursor, limit, with_snapshot = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4] == '1'
local budget = 4 * limit + 100

local out, found = {}, 0
local min = cursor == '' and '-' or '(' .. cursor
while found < limit and budget > 0 do
  local want = math.min(limit - found, budget)
  local members = redis.call('ZRANGE', index, min, '+', 'BYLEX', 'LIMIT', 0, want)
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
  min = '(' .. members[#members]
end
return out
