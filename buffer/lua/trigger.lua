--[[
trigger — a trigger's Redis steps in one call, in the trigger path's order (docs/architecture.md#trigger-path,
steps 3–5): request-key de-duplication, the idempotency claim, the gate, the accept. It stops at the first
step whose answer needs Python (a held key: is its run alive? — a Postgres question) and says which.

KEYS[1]  e:<run>            entry hash
KEYS[2]  q:<env>            the env's queue
KEYS[3]  org:<org>:envs     envs of the org with queued entries
KEYS[4]  orgs               orgs of the shard with queued entries
KEYS[5]  closed:envs        envs whose intake an operator closed
KEYS[6]  rate:<env>         the gate's window counter (``lib/gate_trip.lua``)
KEYS[7]  tripped:<env>      the gate's tripped marker
KEYS[8]  req:<env>:…        only with ARGV[13]: the request key (x-trigger-request-idempotency-key)
KEYS[8 or 9]  idem:<env>:…  only with ARGV[14]: the task-level idempotency key (KEYS[9] when KEYS[8] is req)
KEYS[last] fence:req        only with ARGV[18]: the shard's request-key fence (after req and idem)
ARGV[1]  run id
ARGV[2]  env id
ARGV[3]  org id
ARGV[4]  the snapshot as stored (plain JSON or compressed, buffer/stored_snapshot.py), byte-for-byte and never
         read; "" when ARGV[12] is not "1" (this call cannot accept)
ARGV[5]  now_ms
ARGV[6]  max entries per env queue (exact cap)
ARGV[7]  shard key base "<prefix>:{m<k>}:" (for keys ``lib/entry_accept.lua`` derives)
ARGV[8]  "count": the gate counts this trigger; "skip": Python's checks already passed it through
         (switch off, bypass, org not enrolled without shadow mode) and nothing is counted
ARGV[9]  window_ms, ARGV[10] threshold, ARGV[11] hold_ms  (the gate's settings, with "count")
ARGV[12] "1" if a tripped gate mollifies (the org is enrolled), else "0" (shadow: pass through)
ARGV[13] request key TTL in ms, or "" (no KEYS request key)
ARGV[14] idempotency key TTL in ms, or "" (no KEYS idempotency key)
ARGV[15] the snapshot's created_ms (digits; the caller reads it from the JSON), its env index position;
         "" when ARGV[12] is not "1"
ARGV[16] with ARGV[14]: the idempotency claim's PX when the gate passes the trigger through (long enough to
         cover its direct write; its row answers after that), or "" to check the key without ever writing
         it (a trigger that can never be buffered: the Postgres unique index alone keeps it to one run)
ARGV[17] "1": a free idempotency key of a trigger about to be accepted stops the script (IDEM_UNCLAIMED),
         because a row may hold the key in Postgres with its claim gone (cut or lapsed); "0": accept it
ARGV[18] (optional) the fence's TTL in ms, with a request key: a request key Redis does not hold is trusted
         to be new only while the fence exists (docs/api.md#request-idempotency); each such trigger refreshes it
ARGV[19] (optional) the kick's mark TTL in ms, or "": kicks off (``lib/drain_kick.lua``; ARGV[18] is then
         passed, "" without a fence)

Returns {status, value, count}; count = the gate's window count after this trigger, -1 if not counted:
  {"REQ_HELD", holder, -1}      the request key is held by another run; nothing written
  {"UNFENCED", "", -1}          the request key is not held and the fence is gone: Postgres may hold the key
                                (written during a Redis outage); nothing written, the caller restores and retries
  {"IDEM_HELD", holder, -1}     the idempotency key is held by another run; the request key (if any) is
                                now held by ARGV[1], nothing else written
  {"PASS", tripped 1/0, count}  the gate passes it through: both keys (if any) are now held by ARGV[1]
                                (the idempotency key only with ARGV[16] ~= "", for ARGV[16] ms)
  {"IDEM_UNCLAIMED", depth, count}  (ARGV[17] = "1") the gate mollifies and nothing claims the key: only the
                                request key (if any) is now held by ARGV[1]; Python asks Postgres, then accepts
  {"ACCEPTED", depth, count, kick}  parked: entry, queue, keys written (``entry_accept``); kick 1: the shard
                                had no drain task, send one now (ARGV[19])
  {"DUPLICATE", status, count}  the run id already has an entry (a retried call whose first one ran)
  {"CLOSED", 0, count}          an operator closed the env's intake; no key written
  {"FULL", depth, count}        the queue already holds ARGV[6] entries; no key written
A key "held" by ARGV[1] may have been ours already (the same run id): that is never a holder.
Guarantees: one atomic step, so of two concurrent triggers with one key exactly one holds it, and the cap is
exact. Every check comes before every write, so a refusal or a stop writes only what its line above says
(the gate's counter counts every evaluated trigger, as the gate alone does). The claims refresh their TTL.
]]
local entry, queue, org_envs, orgs, closed, rate, tripped = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local run, env, org, now = ARGV[1], ARGV[2], ARGV[3], ARGV[5]
local req_ttl, idem_ttl, idem_pass_ttl = ARGV[13], ARGV[14], ARGV[16]
local req, idem
local n = 8
if req_ttl ~= '' then req = KEYS[n]; n = n + 1 end
if idem_ttl ~= '' then idem = KEYS[n]; n = n + 1 end
local fence_ttl = ARGV[18] or ''
local fence
if fence_ttl ~= '' then fence = KEYS[n] end

local function held_by_other(key)
  local holder = redis.call('GET', key)
  if holder and holder ~= run then return holder end
  return nil
end

-- 3. request-key de-duplication
if req then
  local holder = held_by_other(req)
  if holder then return {'REQ_HELD', holder, -1} end
  -- A key Redis does not hold is new only if no Redis outage may have left it in Postgres alone: the fence
  -- exists only while Redis has answered without a gap longer than its TTL.
  if fence then
    if redis.call('EXISTS', fence) == 0 then return {'UNFENCED', '', -1} end
    redis.call('PEXPIRE', fence, fence_ttl)
  end
end
-- 4. task-level idempotency
local idem_free = false
if idem then
  local current = redis.call('GET', idem)
  idem_free = not current
  local holder = current and current ~= run and current or nil
  if holder then
    if req then redis.call('SET', req, run, 'PX', req_ttl) end
    return {'IDEM_HELD', holder, -1}
  end
end
-- 5. the gate
-- A closed env reads as tripped (every trigger reaches the accept, which refuses it); asked once, here.
local is_tripped, count, is_closed = false, -1, false
if ARGV[8] == 'count' then
  is_tripped, count = gate_trip(rate, tripped, nil, env,
    tonumber(now), tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11]))
  is_closed = redis.call('SISMEMBER', closed, env) == 1
  is_tripped = is_tripped or is_closed
end
if not (is_tripped and ARGV[12] == '1') then
  if req then redis.call('SET', req, run, 'PX', req_ttl) end
  if idem and idem_pass_ttl ~= '' then redis.call('SET', idem, run, 'PX', idem_pass_ttl) end
  return {'PASS', is_tripped and 1 or 0, count}
end
-- 5. mollify: the accept's checks, then its writes
if is_closed then
  return {'CLOSED', 0, count}
end
if redis.call('EXISTS', entry) == 1 then
  return {'DUPLICATE', redis.call('HGET', entry, 'status') or '', count}
end
local depth = redis.call('LLEN', queue)
if depth >= tonumber(ARGV[6]) then
  return {'FULL', depth, count}
end
if req then redis.call('SET', req, run, 'PX', req_ttl) end
if idem_free and ARGV[17] == '1' then
  return {'IDEM_UNCLAIMED', depth, count}
end
entry_accept(
  {entry = entry, queue = queue, org_envs = org_envs, orgs = orgs, idem = idem, base = ARGV[7]},
  {run = run, env = env, org = org, snapshot = ARGV[4], now_ms = now, idem_ttl_ms = idem_ttl,
   created_ms = ARGV[15]})
return {'ACCEPTED', depth + 1, count, drain_kick(ARGV[7], ARGV[19])}
