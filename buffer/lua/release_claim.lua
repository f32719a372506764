--[[
release_claim — compare-and-delete of an idempotency key: only its holder may free it.

KEYS[1]  idem:<env>:… or req:<env>:…   STRING holding the run id
ARGV[1]  run id that believes it holds the key

Returns 1 if the key was held by ARGV[1] and is now deleted, 0 otherwise (free, or held by another run).
Guarantees: a run whose trigger failed can never free a key that another run has claimed since.
]]
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
