--[[
beat_lease — take or renew the beat lease: the one celery beat allowed to send ticks
(docs/architecture.md#beat-lease).

KEYS[1]  beat:lease   HASH holder, epoch, since_ms, renewed_ms; PX = the lease's TTL (gone: nobody holds it)
KEYS[2]  beat:epoch   STRING counter of lease takings, never deleted or expired (the fencing number)
ARGV[1]  holder, "<host>:<pid>" of the calling beat
ARGV[2]  epoch the caller holds (0: none)
ARGV[3]  ttl_ms
ARGV[4]  now_ms (recorded, for the dashboard; the lease itself lapses by Redis's PX)

Returns {epoch, holder}: the lease's epoch and holder after the call. The caller holds the lease iff the
holder is ARGV[1] and the epoch is the one it holds or a new one it was just given.
Guarantees: renewal only if the lease is still the caller's own taking (holder and epoch both match), so a
beat that paused past its TTL never renews a lease someone took since; a free lease is taken with the
counter incremented, so every taking has a larger epoch than all before it (a message sent under an older
epoch is recognisably stale); a held lease is never changed by another caller.
]]
full_memory_ok(KEYS[1])  -- renewed at maxmemory too: a lost lease stops the drain, which frees memory
local lease, counter = KEYS[1], KEYS[2]
local holder, held, ttl, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local current = redis.call('HMGET', lease, 'holder', 'epoch')
if current[1] then
  if current[1] == holder and current[2] == held then
    redis.call('HSET', lease, 'renewed_ms', now)
    redis.call('PEXPIRE', lease, ttl)
  end
  return {current[2], current[1]}
end
local epoch = tostring(redis.call('INCR', counter))
redis.call('HSET', lease, 'holder', holder, 'epoch', epoch, 'since_ms', now, 'renewed_ms', now)
redis.call('PEXPIRE', lease, ttl)
return {epoch, holder}
