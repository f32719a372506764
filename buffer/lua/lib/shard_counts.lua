--[[
shard_counts — the per-shard bookkeeping that lets a scrape read a shard's numbers in O(1) calls instead
of walking its envs (docs/architecture.md#shard-counters). Prepended to every script, like presence.

Keys, derived from the shard base "<prefix>:{m<k>}:" (the same slot as the caller's keys):
  base .. "queued"   STRING  how many ids the shard's env queues hold together (the sum of their LLENs)
  base .. "heads"    ZSET    "<org>:<env>" → accepted_ms of that env's queue head, one member per env with a
                             non-empty queue (a head is the next entry leased, normally the env's oldest)
KEYS     none of its own: the callers pass the shard base and the ids.
ARGV     none.
Returns  nothing; it defines one local function:
  queue_moved(base, org, env, delta)   after pushing onto (delta > 0) or removing from (delta < 0) the env's
                                       queue: adds delta to "queued" and re-reads the queue head into "heads"
                                       (removing the env's member when the queue is empty).
Guarantees: called inside the caller's script after each change of a queue, so the counter and the heads
change in the same atomic step as the queue. Cost: INCRBY, LINDEX, HGET and one ZADD or ZREM. Retrying,
leased and dead need no counter of their own: they are the ZCARDs of retry, leases and dead.
]]
local function queue_moved(base, org, env, delta)
  if delta ~= 0 then redis.call('INCRBY', base .. 'queued', delta) end
  local member = org .. ':' .. env
  local head = redis.call('LINDEX', base .. 'q:' .. env, 0)
  local accepted = head and redis.call('HGET', base .. 'e:' .. head, 'accepted_ms')
  if accepted then
    redis.call('ZADD', base .. 'heads', accepted, member)
  else
    redis.call('ZREM', base .. 'heads', member)
  end
end
