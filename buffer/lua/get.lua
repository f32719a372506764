--[[
get — read one entry.

KEYS[1]  e:<run>   entry hash
KEYS[2]  s:<run>   optional: the entry's snapshot — given, its value (as stored, plain or compressed) is appended as the field "snapshot"
ARGV     none
Returns the entry as a flat HGETALL list (field, value, …); empty when the entry does not exist
(never accepted, or acked and past its grace TTL).
Guarantees: one consistent read of all fields and the snapshot. Tenancy (env) is checked by the caller.
]]
local flat = redis.call('HGETALL', KEYS[1])
if #flat > 0 and KEYS[2] then
  local snapshot = redis.call('GET', KEYS[2])
  if snapshot then
    flat[#flat + 1] = 'snapshot'
    flat[#flat + 1] = snapshot
  end
end
return flat
