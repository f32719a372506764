--[[
recount — rebuild one shard's counters (queued, heads) from its queues: for a buffer filled before the
scripts kept them, or to repair a counter an operator suspects (docs/runbook.md, docs/architecture.md#shard-counters).

KEYS[1]  orgs      orgs of the shard with queued entries
KEYS[2]  queued    the shard's queued-id counter
KEYS[3]  heads     "<org>:<env>" → accepted_ms of the env's queue head
ARGV[1]  shard key base "<prefix>:{m<k>}:" (envs of an org are base .. "org:" .. org .. ":envs", queues
         base .. "q:" .. env, entries base .. "e:" .. run)

Returns {queued before, queued after}.
Guarantees: one atomic step, so no script changes a queue halfway: afterwards queued is the sum of the
queues' lengths and heads holds exactly one member per non-empty queue. Cost O(orgs + envs of the shard)
(LLEN, LINDEX, HGET each): an operator's one-off, never on a hot path.
]]
local orgs, queued_key, heads = KEYS[1], KEYS[2], KEYS[3]
local base = ARGV[1]
local before = tonumber(redis.call('GET', queued_key) or '0')

redis.call('DEL', heads)
local queued = 0
for _, org in ipairs(redis.call('SMEMBERS', orgs)) do
  for _, env in ipairs(redis.call('SMEMBERS', base .. 'org:' .. org .. ':envs')) do
    local queue = base .. 'q:' .. env
    queued = queued + redis.call('LLEN', queue)
    local head = redis.call('LINDEX', queue, 0)
    local accepted = head and redis.call('HGET', base .. 'e:' .. head, 'accepted_ms')
    if accepted then redis.call('ZADD', heads, accepted, org .. ':' .. env) end
  end
end
redis.call('SET', queued_key, queued)
return {before, queued}
