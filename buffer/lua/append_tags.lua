--[[
append_tags — add tags to a buffered run without rewriting its snapshot (docs/architecture.md#reads-and-mutations-of-buffered-runs).

KEYS[1]  e:<run>   entry hash
KEYS[2]  s:<run>   the entry's snapshot (read for its tags)
ARGV[1]  env id of the caller (tenancy: another env's run is NOT_FOUND)
ARGV[2]  max tags per run
ARGV[3…] tags to add

Returns {status, total, added}: total = distinct tags of the run after the append (snapshot tags, then
extra_tags, then the new ones), added = how many were new.
  status "QUEUED" / "LEASED" / "DEAD"  appended to extra_tags (a LEASED caller must also wait for the row)
  {"TOO_MANY", would-be total, 0}      total would exceed ARGV[2]: nothing written
  {"ACKED", 0, 0}                      already materialised: nothing changed, the caller uses Postgres
  {"NOT_FOUND", 0, 0}                  no such entry in this env
Guarantees: tags are deduplicated against the snapshot's tags (read with cjson; "tags" may be absent, a
list, a string, or {} — cjson's empty list — which counts as zero), the extra_tags already stored and
each other. extra_tags is a JSON array in a hash field. A snapshot that is not a JSON object is an error.
]]
local entry = KEYS[1]
local f = redis.call('HMGET', entry, 'env', 'status', 'snapshot', 'extra_tags')
local env, status, snapshot, extra_json = f[1], f[2], f[3], f[4]
if KEYS[2] then snapshot = redis.call('GET', KEYS[2]) or snapshot end -- the hash field: written before s:<run>
if not env or env ~= ARGV[1] then return {'NOT_FOUND', 0, 0} end
if status == 'ACKED' then return {'ACKED', 0, 0} end

local ok, doc = pcall(cjson.decode, snapshot or '')
if not ok or type(doc) ~= 'table' then
  return redis.error_reply('mollifier: snapshot of ' .. entry .. ' is not a JSON object')
end

local seen, count = {}, 0
local function note(tag)
  local kind = type(tag)
  if kind == 'number' then tag = tostring(tag) elseif kind ~= 'string' then return false end
  if seen[tag] then return false end
  seen[tag] = true
  count = count + 1
  return true
end
local function note_all(value)
  if type(value) == 'table' then
    for _, tag in pairs(value) do note(tag) end
  else
    note(value)
  end
end

note_all(doc['tags'])
local extra = {}
if extra_json then extra = cjson.decode(extra_json) end
if type(extra) ~= 'table' then extra = {} end
note_all(extra)

local fresh = {}
for i = 3, #ARGV do
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
