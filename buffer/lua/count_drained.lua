--[[
count_drained — add entries that left the buffer to the shard's current drain-rate bucket (``buffer.stats``),
also when the buffer's Redis is at maxmemory (``lib/full_memory.lua``): the drain calls it after an ack.

KEYS[1]  drained:<bucket ms>
ARGV[1]  count
ARGV[2]  the bucket's TTL in ms

Returns the bucket's new count.
Guarantees: the bucket always carries its TTL.
]]
full_memory_ok(KEYS[1])
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return n
