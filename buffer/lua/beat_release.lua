--[[
beat_release — give the beat lease up at a clean shutdown, so a standby beat takes over at its next poll
instead of after the TTL (docs/architecture.md#beat-lease).

KEYS[1]  beat:lease
ARGV[1]  holder
ARGV[2]  epoch the caller holds

Returns 1 if the caller's lease was deleted, 0 if it was not the caller's (taken since, or lapsed).
Guarantees: only the holder's own taking is deleted; the epoch counter is untouched.
]]
local current = redis.call('HMGET', KEYS[1], 'holder', 'epoch')
if current[1] == ARGV[1] and current[2] == ARGV[2] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
