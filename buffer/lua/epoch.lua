--[[
epoch — the shard's buffer epoch: read it, or start one if the shard has none
(docs/architecture.md#buffer-epoch).

KEYS[1]  epoch   STRING "<random id>:<started ms>", written only here, never deleted or expired
ARGV[1]  the epoch to start if there is none: "<random id>:<now_ms>"

Returns {epoch, started}: the shard's epoch after the call, and 1 if this call started it (the key was
missing: a first start, or a Redis that lost its data), else 0.
Guarantees: get-or-set in one atomic step, so two checkers that race on an empty shard agree on one epoch
(the second reads the first's). Every key of the shard carries its hash tag, so on a Redis Cluster each
master's epochs vanish with that master's data and only with it.
]]
local current = redis.call('GET', KEYS[1])
if current then
  return {current, 0}
end
redis.call('SET', KEYS[1], ARGV[1])
return {ARGV[1], 1}
