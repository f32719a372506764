--[[
snapshot — where an entry's snapshot lives (docs/architecture.md#the-redis-buffer). Prepended to every script.

The snapshot is its own STRING key base .. "s:" .. run, next to the entry hash base .. "e:" .. run: kept
out of the hash, the hash holds only short fields and stays in Redis's compact listpack encoding (a
snapshot longer than hash-max-listpack-value, 64 bytes by default, would turn the whole hash into a
hashtable). The two keys are created together (accept), share the hash's TTL (ack's grace) and are
deleted together.
KEYS     none of its own.
ARGV     none.
Returns  nothing; it defines one local function:
  snapshot_key(base, run)   the name of the run's snapshot key
]]
local function snapshot_key(base, run)
  return base .. 's:' .. run
end
