--[[
accept — park one run's snapshot in the buffer (docs/architecture.md#trigger-path, #the-redis-buffer).

KEYS[1]  e:<run>            entry hash
KEYS[2]  q:<env>            the env's queue
KEYS[3]  org:<org>:envs     envs of the org with queued entries
KEYS[4]  orgs               orgs of the shard with queued entries
KEYS[5]  closed:envs        optional: envs whose intake an operator closed
KEYS[6]  idem:<env>:…       optional: the task-level idempotency key to bind to this run
ARGV[1]  run id
ARGV[2]  env id
ARGV[3]  org id
ARGV[4]  the snapshot as stored: plain JSON or compressed (buffer/stored_snapshot.py), byte-for-byte, never read
ARGV[5]  now_ms
ARGV[6]  max entries per env queue (exact cap)
ARGV[7]  idempotency key TTL in ms (only with KEYS[6]; "" without it)
ARGV[8]  shard key base "<prefix>:{m<k>}:" (for keys ``lib/entry_accept.lua`` derives)
ARGV[9]  the snapshot's created_ms (digits; the caller reads it from the JSON): its env index position
ARGV[10] (optional) the kick's mark TTL in ms, or "": kicks off (``lib/drain_kick.lua``)

Returns {status, value}:
  {"ACCEPTED", depth after the push, kick}  kick 1: the shard had no drain task, send one now (ARGV[10])
  {"DUPLICATE", status of the existing entry}  the run id already has an entry in any state (incl. ACKED grace)
  {"IDEMPOTENT", holder run id}                KEYS[6] is bound to another run
  {"CLOSED", 0}                                an operator closed the env's intake (KEYS[5])
  {"FULL", depth}                              the queue already holds ARGV[6] entries
Guarantees: checks and writes are one atomic step, so the cap is exact and two accepts of one run id or
of one idempotency key cannot both succeed. On any refusal nothing is written. The entry has no TTL.
The writes are ``entry_accept`` (``lib/entry_accept.lua``).
]]
local entry, queue, org_envs, orgs, closed, idem = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local run, env, org = ARGV[1], ARGV[2], ARGV[3]

if closed and redis.call('SISMEMBER', closed, env) == 1 then
  return {'CLOSED', 0}
end

if redis.call('EXISTS', entry) == 1 then
  return {'DUPLICATE', redis.call('HGET', entry, 'status') or ''}
end
if idem then
  local holder = redis.call('GET', idem)
  if holder and holder ~= run then
    return {'IDEMPOTENT', holder}
  end
end
local depth = redis.call('LLEN', queue)
if depth >= tonumber(ARGV[6]) then
  return {'FULL', depth}
end

entry_accept(
  {entry = entry, queue = queue, org_envs = org_envs, orgs = orgs, idem = idem, base = ARGV[8]},
  {run = run, env = env, org = org, snapshot = ARGV[4], now_ms = ARGV[5], idem_ttl_ms = ARGV[7],
   created_ms = ARGV[9]})
return {'ACCEPTED', depth + 1, drain_kick(ARGV[8], ARGV[10])}
