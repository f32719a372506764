--[[
next_send — a shard task that drained ends (with kicks on, docs/architecture.md#kick): if its shard still has
work due, it keeps the ``drain:sent`` mark for its successor, which it sends; otherwise it drops the mark, so
the next accept kicks. Runs at maxmemory too (``lib/full_memory.lua``).

KEYS[1]  drain:sent   the shard's mark
KEYS[2]  orgs         orgs of the shard with queued entries
KEYS[3]  retry        run id → not-before ms
KEYS[4]  leases       run id → lease deadline ms
ARGV[1]  now_ms       (the drain's clock)
ARGV[2]  ttl_ms       the mark's PX when kept: the successor's broker expiry
ARGV[3]  "1": the task may have a successor (it made progress); "0": drop the mark whatever is due (the
         fan-out's tick takes the shard up again: a task that could not drain must not loop)

Returns 1 if the mark is kept (send the successor), 0 if it was dropped.
Guarantees: the check and the drop are one atomic step with every accept's kick (``lib/drain_kick.lua``): an
entry parked before it is seen here (successor), one parked after it finds no mark (kick). Never both, never
neither. Due: anything queued, a retry whose not-before has passed, a lease that has expired.
]]
full_memory_ok(KEYS[1])
local sent, orgs, retry, leases = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now = ARGV[1]
if ARGV[3] == '1' and (
    redis.call('SCARD', orgs) > 0
    or #redis.call('ZRANGEBYSCORE', retry, '-inf', now, 'LIMIT', 0, 1) > 0
    or #redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, 1) > 0) then
  redis.call('SET', sent, 1, 'PX', ARGV[2])
  return 1
end
redis.call('DEL', sent)
return 0
