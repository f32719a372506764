--[[
append_tags — add tags to a buffered run without rewriting its snapshot (docs/architecture.md#reads-and-mutations-of-buffered-runs).

KEYS[1]  e:<run>   entry hash
ARGV[1]  env id of the caller (tenancy: another env's run is NOT_FOUND)
ARGV[2]  max tags per run
ARGV[3]  m, how many of the snapshot's own tags follow; -1: the caller could not read the snapshot
ARGV[4 … 3+m]  the snapshot's tags (the caller read and decoded the snapshot: it may be compressed, which
         Lua cannot read; a snapshot's tags never change, so reading them first cannot race)
ARGV[4+m …]    tags to add

Returns {status, total, added}: total = distinct tags of the run after the append (snapshot tags, then
extra_tags, then the new ones), added = how many were new.
  status "QUEUED" / "LEASED" / "DEAD"  appended to extra_tags (a LEASED caller must also wait for the row)
  {"TOO_MANY", would-be total, 0}      total would exceed ARGV[2]: nothing written
  {"ACKED", 0, 0}                      already materialised: nothing changed, the caller uses Postgres
  {"NOT_FOUND", 0, 0}                  no such entry in this env
Guarantees: tags are deduplicated against the snapshot's tags (as given: ``Buffer.append_tags`` reads them
the way this script once did with cjson — "tags" absent, a list, a string, or an object's values; numbers as
their text), the extra_tags already stored and each other. extra_tags is a JSON array in a hash field.
An unreadable snapshot (ARGV[3] = -1) is an error, after the NOT_FOUND and ACKED answers.
]]
local entry = KEYS[1]
local f = redis.call('HMGET', entry, 'env', 'status', 'extra_tags')
local env, status, extra_json = f[1], f[2], f[3]
if not env or env ~= ARGV[1] then return {'NOT_FOUND', 0, 0} end
if status == 'ACKED' then return {'ACKED', 0, 0} end
local own = tonumber(ARGV[3])
if own < 0 then
  return redis.error_reply('mollifier: snapshot of ' .. entry .. ' is not a JSON object')
end

local seen, count = {}, 0
local function note(tag)
  if seen[tag] then return false end
  seen[tag] = true
  count = count + 1
  return true
end

for i = 4, 3 + own do note(ARGV[i]) end
local extra = {}
if extra_json then extra = cjson.decode(extra_json) end
if type(extra) ~= 'table' then extra = {} end
for _, tag in pairs(extra) do
  local kind = type(tag)
  if kind == 'number' then note(tostring(tag)) elseif kind == 'string' then note(tag) end
end

local fresh = {}
for i = 4 + own, #ARGV do
  if note(ARGV[i]) then fresh[#fresh + 1] = ARGV[i] end
end
if count > tonumber(ARGV[2]) then return {'TOO_MANY', count, 0} end
if #fresh > 0 then
  local merged = {}
  for _, tag in ipairs(extra) do merged[#merged + 1] = tag end
  for _, tag in ipairs(fresh) do merged[#merged + 1] = tag end
  redis.call('HSET', entry, 'extra_tags', cjson.encode(merged))
end
return {status, count, #fresh}
