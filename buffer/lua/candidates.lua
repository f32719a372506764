--[[
candidates — what one drain round may take: the next orgs after the durable org cursor, one env each
after that org's env cursor, with the env's queue depth (docs/architecture.md#fair-rounds).

KEYS[1]  orgs            orgs of the shard with queued entries
KEYS[2]  cursor:orgs     the org cursor (an org id; absent before the first round)
KEYS[3]  cursor:envs     org → env cursor (an env id)
KEYS[4]  paused:orgs     orgs an operator paused (skipped, with all their envs)
KEYS[5]  paused:envs     envs an operator paused (skipped)
ARGV[1]  shard key base "<prefix>:{m<k>}:" (envs of an org are base .. "org:" .. org .. ":envs",
         queues base .. "q:" .. env)
ARGV[2]  max_orgs: at most this many orgs per round (≥ 1)

Returns {covers_all, org, env, depth, org, env, depth, …}: covers_all is 1 when every org of the shard
was chosen, none has more than one queued env and nothing was skipped as paused (then the picks are
everything queued right now), else 0; then one triple per chosen org that has an unpaused queued env, in
round order. Paused orgs and envs are not candidates: their entries wait, accepted and counted.
Orgs and envs are ordered numerically; the round starts at the first org greater than the cursor
(wrapping), so an org joining or leaving never shifts the others. Each chosen org's env is the first
greater than its env cursor (wrapping).
Guarantees: reads and cursor moves are one atomic step: the org cursor becomes the first chosen org
(so the next round starts one org later) and each chosen org's env cursor its chosen env. Nothing else
is written; entries are not touched (``lease`` takes them). Cost O(orgs of the shard + envs of the
chosen orgs), all in one round trip.
]]
full_memory_ok(KEYS[1])  -- the drain frees memory: it runs at maxmemory too (lib/full_memory.lua)
local orgs_key, cursor_orgs, cursor_envs, paused_orgs, paused_envs = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local base, max_orgs = ARGV[1], tonumber(ARGV[2])

-- Ids sorted by their numeric value, kept as the member strings: key names and replies use the exact
-- text (Lua prints a number of 10^14 or more as "1.2e+14", which names another key).
local function sorted_ids(members)
  table.sort(members, function(a, b) return tonumber(a) < tonumber(b) end)
  return members
end

-- Index of the first id greater than ``after`` (wrapping to 1); 1 when there is no cursor.
local function start_after(ids, after)
  if not after then return 1 end
  local cursor = tonumber(after)
  for i, v in ipairs(ids) do
    if tonumber(v) > cursor then return i end
  end
  return 1
end

local skipped = false
-- Members of ``key`` that are not in the set ``paused``.
local function unpaused(key, paused)
  local out = {}
  for _, id in ipairs(redis.call('SMEMBERS', key)) do
    if redis.call('SISMEMBER', paused, id) == 0 then out[#out + 1] = id else skipped = true end
  end
  return out
end

local orgs = sorted_ids(unpaused(orgs_key, paused_orgs))
if #orgs == 0 then return {skipped and 0 or 1} end

local first = start_after(orgs, redis.call('GET', cursor_orgs))
local n = math.min(max_orgs, #orgs)
local covers_all = (n == #orgs and not skipped) and 1 or 0
local out = {0}
for i = 0, n - 1 do
  local org = orgs[(first - 1 + i) % #orgs + 1]
  local envs = sorted_ids(unpaused(base .. 'org:' .. org .. ':envs', paused_envs))
  if #envs > 1 then covers_all = 0 end
  if #envs > 0 then
    local env = envs[start_after(envs, redis.call('HGET', cursor_envs, org))]
    redis.call('HSET', cursor_envs, org, env)
    out[#out + 1] = org
    out[#out + 1] = env
    out[#out + 1] = redis.call('LLEN', base .. 'q:' .. env)
  end
end
redis.call('SET', cursor_orgs, orgs[first])
out[1] = skipped and 0 or covers_all
return out
