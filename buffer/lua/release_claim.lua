--[[
release_claim — compare-and-delete of an idempotency key: only its holder may free it.

KEYS[1]  idem:<env>:… or req:<env>:…   STRING holding the run id
ARGV[1]  run id that believes it holds the key
ARGV[2]  (optional) grace_ms > 0: the key is not deleted but cut to live at most that long (left alone if it
         lapses sooner). For the claim of a run whose row is committed: a trigger that asked Postgres about the
         key just before the commit still finds the claim (docs/architecture.md#idempotency).

Returns 1 if the key was held by ARGV[1] and is now deleted (or cut), 0 otherwise (free, or held by another run).
Guarantees: a run whose trigger failed can never free a key that another run has claimed since.
]]
if redis.call('GET', KEYS[1]) == ARGV[1] then
  local grace = tonumber(ARGV[2] or '0') or 0
  if grace > 0 then
    local left = redis.call('PTTL', KEYS[1])
    if left < 0 or left > grace then redis.call('PEXPIRE', KEYS[1], grace) end
  else
    redis.call('DEL', KEYS[1])
  end
  return 1
end
return 0
