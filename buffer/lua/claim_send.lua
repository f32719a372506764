--[[
claim_send — mark one shard as having a drain task waiting in the broker (docs/architecture.md#fan-out), also
when the buffer's Redis is at maxmemory (``lib/full_memory.lua``): a fan-out refused there would stop the
drain, the one thing that frees memory.

KEYS[1]  drain:sent   the shard's mark
ARGV[1]  ttl_ms       how long the mark lives if the task never runs (its broker expiry)

Returns 1 if the mark was free and is now set (send the task), 0 if a task already waits.
Guarantees: a SET NX PX — of two fan-outs, exactly one gets 1.
]]
full_memory_ok(KEYS[1])
if redis.call('SET', KEYS[1], 1, 'NX', 'PX', ARGV[1]) then
  return 1
end
return 0
