--[[
heartbeat — a drain worker says it is alive (docs/operations.md#liveness), also when the buffer's Redis is at
``maxmemory`` (``lib/full_memory.lua``): a worker that looked dead while memory was full would send an operator
after the wrong cause.

KEYS[1]  drain:workers      HASH worker name → ms of its last heartbeat (shard 0's keys: one for the buffer)
ARGV[1]  worker             the Celery node name (``drain@host``)
ARGV[2]  now_ms             the worker's clock
ARGV[3]  prune_before_ms    fields older than this are removed (workers long gone: killed, never shut down)

Returns the number of fields pruned.
Guarantees: the worker's own field is written first, so it is never pruned by its own call; the hash holds one
field per drain worker seen since ``prune_before_ms`` (a handful), so the scan is small.
]]
full_memory_ok(KEYS[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local cutoff = tonumber(ARGV[3])
local fields = redis.call('HGETALL', KEYS[1])
local pruned = 0
for i = 1, #fields, 2 do
  if tonumber(fields[i + 1]) < cutoff then
    redis.call('HDEL', KEYS[1], fields[i])
    pruned = pruned + 1
  end
end
return pruned
