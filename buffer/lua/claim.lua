--[[
claim — compare-and-set of an idempotency key (task-level "idem:" or request-level "req:") to a run id
(docs/architecture.md#trigger-path, steps 3 and 4).

KEYS[1]  idem:<env>:… or req:<env>:…   STRING holding the run id
ARGV[1]  run id that wants the key
ARGV[2]  ttl_ms (the key's PX; refreshed on every successful claim)
ARGV[3]  stale run id, or "" — a holder the caller knows is gone (e.g. its run row expired) may be replaced

Returns nil when ARGV[1] now holds the key (it was free, already ours, or held by ARGV[3]); otherwise the
run id of the current holder, unchanged.
Guarantees: atomic, so of two concurrent claims with different run ids exactly one wins.
]]
local key, run, stale = KEYS[1], ARGV[1], ARGV[3]
local holder = redis.call('GET', key)
if holder and holder ~= run and (stale == '' or holder ~= stale) then
  return holder
end
redis.call('SET', key, run, 'PX', ARGV[2])
return false
