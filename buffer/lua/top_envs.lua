--[[
top_envs — one shard's deepest orgs and envs, for the operator dashboard's shard page
(docs/architecture.md#operator-admin).

KEYS[1]  orgs     orgs of the shard with queued entries
ARGV[1]  shard key base "<prefix>:{m<k>}:" (envs of an org are base .. "org:" .. org .. ":envs", queues
         base .. "q:" .. env, entries base .. "e:" .. run)
ARGV[2]  limit: at most this many orgs and this many envs are returned (≥ 1)

Returns {{orgs, envs, queued}, {org, depth, envs, …}, {org, env, depth, head accepted_ms, …}}:
  first the shard's number of orgs and envs with a non-empty queue and the sum of their queue lengths;
  then up to limit orgs, deepest first (depth = the sum of its envs' queue lengths, envs = how many of its
  envs have a non-empty queue); then up to limit envs, deepest first, each with the accepted_ms of its
  queue head (its oldest entry; -1 if the head's hash is unreadable). Ties go to the lower id. Ids are
  returned as the member strings.
Guarantees: read-only; one consistent view of the shard. Counts queue lengths only: entries waiting out a
retry or leased are in no queue (shard_stats counts those per shard). Cost O(orgs + envs of this shard)
O(1) reads (SMEMBERS, LLEN) plus a sort, and 2 reads per returned env: it never walks a queue, never
touches another shard, and its reply is bounded by limit however many tenants there are.
]]
local orgs_key = KEYS[1]
local base, limit = ARGV[1], tonumber(ARGV[2])

local org_rows, env_rows, env_count, queued = {}, {}, 0, 0
for _, org in ipairs(redis.call('SMEMBERS', orgs_key)) do
  local org_depth, org_envs = 0, 0
  for _, env in ipairs(redis.call('SMEMBERS', base .. 'org:' .. org .. ':envs')) do
    local depth = redis.call('LLEN', base .. 'q:' .. env)
    env_rows[#env_rows + 1] = {org, env, depth}
    org_depth, org_envs = org_depth + depth, org_envs + 1
  end
  org_rows[#org_rows + 1] = {org, org_depth, org_envs}
  env_count, queued = env_count + org_envs, queued + org_depth
end

-- Deepest first, ties by the numeric id. Replies keep the member strings: Lua prints a number of 10^14 or
-- more as "1.2e+14", which would name another tenant.
table.sort(org_rows, function(a, b) -- {org, depth, envs}
  if a[2] ~= b[2] then return a[2] > b[2] end
  return tonumber(a[1]) < tonumber(b[1])
end)
table.sort(env_rows, function(a, b) -- {org, env, depth}
  if a[3] ~= b[3] then return a[3] > b[3] end
  return tonumber(a[2]) < tonumber(b[2])
end)

local top_orgs = {}
for i = 1, math.min(limit, #org_rows) do
  local row = org_rows[i]
  top_orgs[#top_orgs + 1] = row[1]
  top_orgs[#top_orgs + 1] = row[2]
  top_orgs[#top_orgs + 1] = row[3]
end

local top_envs = {}
for i = 1, math.min(limit, #env_rows) do
  local row = env_rows[i]
  local head = redis.call('LINDEX', base .. 'q:' .. row[2], 0)
  local accepted = head and tonumber(redis.call('HGET', base .. 'e:' .. head, 'accepted_ms')) or -1
  top_envs[#top_envs + 1] = row[1]
  top_envs[#top_envs + 1] = row[2]
  top_envs[#top_envs + 1] = row[3]
  top_envs[#top_envs + 1] = accepted or -1
end

return {{#org_rows, env_count, queued}, top_orgs, top_envs}
