--[[
count_drained — add entries that left the buffer to the shard's current drain-rate bucket (``buffer.stats``)
and to its running total (the dashboard charts' drain rate), and record the time of this drain progress, also
when the buffer's Redis is at maxmemory (``lib/full_memory.lua``): the drain calls it after a round in which
≥ 1 entry was acked or dead-lettered.

KEYS[1]  drained:<bucket ms>
KEYS[2]  drain:progress
KEYS[3]  drained:total   entries that ever left the shard (never expires)
ARGV[1]  count
ARGV[2]  the bucket's TTL in ms
ARGV[3]  now ms (the drain's clock): the time of this progress

Returns the bucket's new count.
Guarantees: the bucket always carries its TTL; drain:progress never goes back in time (a round that
finished late with an older clock leaves a later progress in place) and never expires; drained:total grows by
count and never expires; it falls only with a Redis that went back in time (an older snapshot, a lagging
replica promoted), which the charts treat as a counter reset.
]]
full_memory_ok(KEYS[1])
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('INCRBY', KEYS[3], ARGV[1])
local last = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
if tonumber(ARGV[3]) > last then
  redis.call('SET', KEYS[2], ARGV[3])
end
return n
