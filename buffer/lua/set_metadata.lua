--[[
set_metadata — replace a buffered run's metadata, compare-and-set on its version (docs/architecture.md#reads-and-mutations-of-buffered-runs).

KEYS[1]  e:<run>   entry hash
ARGV[1]  env id of the caller (tenancy: another env's run is NOT_FOUND)
ARGV[2]  the metadata_version the caller's new value was computed from (an absent field is version 0)
ARGV[3]  the new metadata, a JSON object (stored as the metadata field, byte for byte)

Returns {status, version, metadata}:
  {"QUEUED" | "DEAD", new version, ""}  written; metadata_version is now ARGV[2] + 1
  {"CONFLICT", current version, current metadata or ""}  another writer got there first: nothing written;
                                        the caller recomputes from the value returned and tries again
  {"LEASED", version, ""}               nothing written: a drainer holds the entry, the caller waits for the row
  {"ACKED", 0, ""}                      already materialised: the caller changes the Postgres row
  {"NOT_FOUND", 0, ""}                  no such entry in this env
Guarantees: two writers that read the same version cannot both succeed, so no update is lost (the loser
retries on the winner's value). The snapshot is not rewritten: the metadata field overrides its metadata.
Nothing is written while a drainer holds the entry (see reschedule.lua for why).
]]
local entry = KEYS[1]
local f = redis.call('HMGET', entry, 'env', 'status', 'metadata_version', 'metadata')
local env, status = f[1], f[2]
local version = tonumber(f[3] or '0')
if not env or env ~= ARGV[1] then return {'NOT_FOUND', 0, ''} end
if status == 'ACKED' then return {'ACKED', 0, ''} end
if status == 'LEASED' then return {'LEASED', version, ''} end
if version ~= tonumber(ARGV[2]) then return {'CONFLICT', version, f[4] or ''} end
redis.call('HSET', entry, 'metadata', ARGV[3], 'metadata_version', version + 1)
return {status, version + 1, ''}
