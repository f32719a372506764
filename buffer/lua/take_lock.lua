--[[
take_lock — take a shard's drain or sweep lock (SET NX PX), also when the buffer's Redis is at maxmemory
(``lib/full_memory.lua``): the drain that holds it frees memory. Released with redis-py's own compare-and-
delete script (``Buffer.shard_lock``), which only deletes.

KEYS[1]  drain:lock or sweep:lock
ARGV[1]  owner token
ARGV[2]  ttl_ms

Returns 1 if ARGV[1] now holds the lock, 0 if another owner holds it.
Guarantees: of two takers, exactly one gets 1; the lock lapses after ARGV[2] ms if never released.
]]
full_memory_ok(KEYS[1])
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
