--[[
lease — pop up to n entries of one env, FIFO, and mark them in flight (docs/architecture.md#the-redis-buffer, #drain).

KEYS[1]  q:<env>            the env's queue
KEYS[2]  org:<org>:envs     envs of the org with queued entries
KEYS[3]  orgs               orgs of the shard with queued entries
KEYS[4]  leases             run id → lease deadline ms
ARGV[1]  shard key base "<prefix>:{m<k>}:" (entry keys are base .. "e:" .. run)
ARGV[2]  env id
ARGV[3]  org id
ARGV[4]  n, how many to pop (≥ 1)
ARGV[5]  now_ms
ARGV[6]  lease_ms
ARGV[7]  max_bytes: stop before the snapshot bytes taken would pass this (0: no limit); the first entry
         is always taken, so a huge snapshot is leased alone, never stuck. The bytes are the JSON's: a
         plain snapshot's length, a compressed one's (buffer/stored_snapshot.py: "\x01", the JSON length as
         4 bytes big-endian, deflate) from its header — not its stored length, as a 1 MiB payload of one
         repeated byte deflates to ~1 KiB and the budget bounds the memory the drainer needs
ARGV[8]  mode: "round" (a drain round's lease: stops before an entry marked solo — its last lease
         expired, see reclaim_expired), "solo" (only the queue head, whatever it is) or "all" (no stop)

Returns {solo_waiting, run id, {values…}, run id, {…}, …} in queue order: solo_waiting is 1 when a "round"
lease stopped at a solo entry (the caller leases it alone, after this round's commit), else 0. The values are the entry's fields
in this fixed order (nil for an absent field) — ``buffer.buffer.LEASE_FIELDS`` names them:
  snapshot, env, org, status, attempts, accepted_ms, lease_until_ms, cancelled_at, cancel_reason,
  extra_tags, last_error, materialised, delay_until_ms, metadata, metadata_version
each entry already showing status LEASED and lease_until_ms = now_ms + lease_ms. (Values by position,
not HGETALL's field/value pairs: half the strings to build and parse on the drain's hottest path.)
Guarantees: popping and marking are atomic, so two concurrent leases never get the same entry. A "round"
lease never takes a solo entry, so an entry that may have crashed its last worker cannot take the rest of a
round down with it again; a solo lease takes one entry. When the
queue ends up empty the env leaves KEYS[2], and the org leaves KEYS[3] if it has no other queued env
(an env is in its org's set iff its queue is non-empty); the shard counters follow (queue_moved). The
snapshot is read from base .. "s:" .. run (else the legacy hash field) as stored, never decoded; the byte
budget counts its JSON length (ARGV[7]). An id whose hash is missing or not QUEUED is dropped from the queue without being
returned (no script leaves such an id in a queue).
Cost: the queue is read with LRANGE and cut once with LTRIM (not an LINDEX and LPOP per entry); per entry
one HMGET (every returned field and solo), one GET (the snapshot) and one HSET; the deadlines go to leases in
one ZADD per 1000 entries.
]]
full_memory_ok(KEYS[1])  -- the drain frees memory: it runs at maxmemory too (lib/full_memory.lua)
local queue, org_envs, orgs, leases = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local base, env, org = ARGV[1], ARGV[2], ARGV[3]
local lease_until = string.format('%d', tonumber(ARGV[5]) + tonumber(ARGV[6]))
local n, max_bytes, mode = tonumber(ARGV[4]), tonumber(ARGV[7] or '0'), ARGV[8] or 'all'
if mode == 'solo' then n = 1 end
local SNAPSHOT, STATUS, LEASE_UNTIL, SOLO = 1, 4, 7, 16 -- positions in the HMGET reply

-- The JSON length of a stored snapshot (nil/false: none), read from a compressed one's header.
local function json_size(snapshot)
  if not snapshot then return 0 end
  if string.byte(snapshot, 1) == 1 and #snapshot >= 5 then
    local a, b, c, d = string.byte(snapshot, 2, 5)
    return ((a * 256 + b) * 256 + c) * 256 + d
  end
  return #snapshot
end

local consumed = 0 -- ids taken off the queue head (leased or dropped); cut with one LTRIM
local out = {0}
local deadlines = {} -- ZADD arguments, sent in chunks (Lua's unpack has a stack limit)
local taken, bytes = 0, 0
local stop = false
while taken < n and not stop do
  local ids = redis.call('LRANGE', queue, consumed, consumed + (n - taken) - 1)
  if #ids == 0 then break end
  for _, run in ipairs(ids) do
    local entry = base .. 'e:' .. run
    local values = redis.call('HMGET', entry, 'snapshot', 'env', 'org', 'status', 'attempts', 'accepted_ms',
      'lease_until_ms', 'cancelled_at', 'cancel_reason', 'extra_tags', 'last_error', 'materialised',
      'delay_until_ms', 'metadata', 'metadata_version', 'solo')
    if values[STATUS] == 'QUEUED' then
      if values[SOLO] == '1' and mode == 'round' then
        out[1] = 1
        stop = true
        break
      end
      local snapshot = redis.call('GET', snapshot_key(base, run)) or values[SNAPSHOT] -- the hash field: written before s:<run>
      local size = json_size(snapshot)
      if taken > 0 and max_bytes > 0 and bytes + size > max_bytes then
        stop = true
        break
      end
      redis.call('HSET', entry, 'status', 'LEASED', 'lease_until_ms', lease_until)
      values[SOLO] = nil
      values[SNAPSHOT], values[STATUS], values[LEASE_UNTIL] = snapshot, 'LEASED', lease_until
      deadlines[#deadlines + 1] = lease_until
      deadlines[#deadlines + 1] = run
      out[#out + 1] = run
      out[#out + 1] = values
      taken, bytes = taken + 1, bytes + size
    end -- else: no script leaves such an id in a queue; it is dropped with the leased ones
    consumed = consumed + 1
    if taken >= n then break end
  end
end
if consumed > 0 then redis.call('LTRIM', queue, consumed, -1) end
for i = 1, #deadlines, 1000 do
  redis.call('ZADD', leases, unpack(deadlines, i, math.min(i + 999, #deadlines)))
end
presence_leave(queue, orgs, org_envs, org, env)
if consumed > 0 then queue_moved(base, org, env, -consumed) end
return out
