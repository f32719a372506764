--[[
requeue — a leased entry failed with a retryable error: count the attempt and park it until its backoff
is over (docs/architecture.md#drain).

KEYS[1]  leases
KEYS[2]  retry     run id → not-before ms
ARGV[1]  shard key base "<prefix>:{m<k>}:"
ARGV[2]  run id
ARGV[3]  now_ms
ARGV[4]  delay_ms (not-before = now_ms + delay_ms)
ARGV[5]  error text (stored as last_error)
ARGV[6]  "tail" (optional): the write timed out on a lock or a statement — the entry may be stuck behind
         something that is not over yet; promote_due puts it at the tail of its queue, not the head, so
         the entries behind it are not held up by it again (docs/architecture.md#drain-outcomes)

Returns the new attempts count, or -1 when the run is not leased (acked, reclaimed or released by someone
else first: nothing is changed).
Guarantees: the entry moves atomically from leases to retry with status QUEUED; it is in no queue, so the
org/env sets are untouched until promote_due puts it back at the head of its queue (at the tail with
ARGV[6] "tail": the hash field requeue_tail 1, which promote_due consumes).
]]
full_memory_ok(KEYS[1])  -- the drain frees memory: it runs at maxmemory too (lib/full_memory.lua)
local leases, retry = KEYS[1], KEYS[2]
local base, run = ARGV[1], ARGV[2]
local entry = base .. 'e:' .. run

if not redis.call('ZSCORE', leases, run) then return -1 end
redis.call('ZREM', leases, run)
if redis.call('EXISTS', entry) == 0 then return -1 end
local attempts = redis.call('HINCRBY', entry, 'attempts', 1)
redis.call('HSET', entry, 'status', 'QUEUED', 'last_error', ARGV[5])
if ARGV[6] == 'tail' then redis.call('HSET', entry, 'requeue_tail', 1) end
redis.call('HDEL', entry, 'lease_until_ms')
redis.call('ZADD', retry, string.format('%d', tonumber(ARGV[3]) + tonumber(ARGV[4])), run)
return attempts
