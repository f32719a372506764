--[[
drain_kick — the kick on idle → busy (docs/architecture.md#kick): an accept that finds no drain task waiting
or running for its shard (no ``drain:sent`` mark) sets the mark and tells the caller to send the shard's
drain task at once, instead of the shard waiting for the fan-out's next tick.

KEYS     none of its own: the mark is derived from the shard key base (``<base>drain:sent``), in the slot of
         every other key of the shard.
ARGV     none: the caller passes ``base`` (the shard key base) and ``ttl_ms`` (the mark's PX: the task's broker
         expiry; "" or nil: kicks are off, nothing is written).
Returns  nothing; it defines ``drain_kick(base, ttl_ms)``, which returns 1 when the mark was free and is now
         set (the caller sends the task), else 0 (a task is waiting or draining: it, or its successor, will
         take this entry).
Guarantees: a SET NX PX in the caller's atomic step, so of any number of accepts into an idle shard exactly
one gets 1, and none does while a task of the shard holds the mark (a storm costs one broker message).
]]
local function drain_kick(base, ttl_ms)
  if ttl_ms == nil or ttl_ms == '' then return 0 end
  if redis.call('SET', base .. 'drain:sent', 1, 'NX', 'PX', ttl_ms) then return 1 end
  return 0
end
