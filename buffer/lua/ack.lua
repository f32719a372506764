--[[
ack — the runs' rows are committed in Postgres: take the entries out of the buffer (docs/architecture.md#drain).

KEYS[1]  leases
KEYS[2]  retry
KEYS[3]  dead
KEYS[4]  orgs
KEYS[5…] idem:<env>:…  the task-level idempotency claims of some of the acked runs (any number, maybe none)
ARGV[1]  shard key base "<prefix>:{m<k>}:"
ARGV[2]  now_ms (stored as acked_ms)
ARGV[3]  grace_ms: how long the acked hash stays readable (0 deletes it at once)
ARGV[4]  n: how many run ids follow
ARGV[5 … 4+n]  run ids
ARGV[5+n …]    for each KEYS[5…], in order, the run id whose claim it is

Returns {n, run, cancelled_at, cancel_reason, extra_tags, run, …}: n = how many entries became ACKED
(already-acked or missing ids are not counted), then each of those entries that carries a cancel flag or
appended tags ("" where absent). A cancel or tags that landed while the entry was leased — or after its
lease expired and it was reclaimed, while a slow drainer was still writing it — came too late for the row
just written: the caller cancels those rows (cancel wins, docs/architecture.md#guarantees) and adds the
tags the row lacks. Reading both in the same script as the ack means no mutation can slip between the
two: a later one sees ACKED and goes to Postgres itself.
Cost: one HMGET per entry reads every field the ack needs (status, env, org, accepted_ms, created_ms,
lease_until_ms, cancel flag, extra tags); leases lose their members in one ZREM per 1000 entries; the env index
member is rebuilt from the hash (``lib/env_index.lua``), never from the snapshot, which no step reads.
Guarantees: each entry leaves leases (and, if a reclaim raced the drain, retry or its queue, keeping the
org/env sets equal to queue presence and the shard counters exact) and its env index ix:<env>; its hash
and its snapshot s:<run> stay, with status ACKED, materialised 1 and a TTL of grace_ms, so a read that raced the drain still finds it and a re-accept of the same run id is refused
as DUPLICATE during the grace. An idempotency claim of KEYS[5…] still held by its run is cut to grace_ms
(deleted with 0; left alone if it lapses sooner): the run's row is committed, so from now on the Postgres
unique index answers for its key, and the claim stops costing memory (docs/architecture.md#idempotency).
A claim held by another run is never touched.
]]
full_memory_ok(KEYS[1])  -- the drain frees memory: it runs at maxmemory too (lib/full_memory.lua)
local leases, retry, dead, orgs = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local base, now, grace = ARGV[1], ARGV[2], tonumber(ARGV[3])
local n_runs = tonumber(ARGV[4])

local function leave_queue(run, env, org)
  local queue = base .. 'q:' .. env
  local removed = redis.call('LREM', queue, 0, run)
  if removed > 0 then
    presence_leave(queue, orgs, base .. 'org:' .. org .. ':envs', org, env)
    queue_moved(base, org, env, -removed)
  end
end

local acked = 0
local cancelled = {}
local runs = {}
for i = 5, 4 + n_runs do
  local run = ARGV[i]
  runs[#runs + 1] = run
  local entry = base .. 'e:' .. run
  local f = redis.call('HMGET', entry, 'status', 'env', 'org', 'accepted_ms', 'created_ms', 'lease_until_ms',
    'cancelled_at', 'cancel_reason', 'extra_tags')
  local status, env, org = f[1], f[2], f[3]
  if status and status ~= 'ACKED' then
    if status == 'QUEUED' and redis.call('ZREM', retry, run) == 0 and env then
      leave_queue(run, env, org)
    elseif status == 'DEAD' then
      redis.call('ZREM', dead, run)
    end
    if f[7] or f[9] then
      table.insert(cancelled, run)
      table.insert(cancelled, f[7] or '')
      table.insert(cancelled, f[8] or '')
      table.insert(cancelled, f[9] or '')
    end
    if index_remove(base, env, run, f[4], f[5]) == 0 then
      legacy_index_remove(base, env, run, entry, f[4])
    end
    local snap = snapshot_key(base, run)
    if grace > 0 then
      redis.call('HSET', entry, 'status', 'ACKED', 'materialised', 1, 'acked_ms', now)
      if f[6] then redis.call('HDEL', entry, 'lease_until_ms') end
      redis.call('PEXPIRE', entry, grace)
      redis.call('PEXPIRE', snap, grace)
    else
      redis.call('DEL', entry, snap)
    end
    acked = acked + 1
  end
end
for i = 1, #runs, 1000 do
  redis.call('ZREM', leases, unpack(runs, i, math.min(i + 999, #runs)))
end
for j = 5, #KEYS do
  local claim = KEYS[j]
  if redis.call('GET', claim) == ARGV[4 + n_runs + j - 4] then
    local left = redis.call('PTTL', claim)
    if grace <= 0 then
      redis.call('DEL', claim)
    elseif left < 0 or left > grace then
      redis.call('PEXPIRE', claim, grace)
    end
  end
end
table.insert(cancelled, 1, acked)
return cancelled
