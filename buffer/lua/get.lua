--[[
get — read one entry.

KEYS[1]  e:<run>   entry hash
ARGV     none
Returns the entry as a flat HGETALL list (field, value, …); empty when the entry does not exist
(never accepted, or acked and past its grace TTL).
Guarantees: one consistent read of all fields. Tenancy (env) is checked by the caller.
]]
return redis.call('HGETALL', KEYS[1])
