--[[
env_index — the per-env index of the entries still in the buffer, which lets a run list page over buffered
runs newest first with bounded work (docs/architecture.md#env-index). Prepended to every script.

Key, derived from the shard base "<prefix>:{m<k>}:":
  base .. "ix:" .. env   ZSET, every score 0, one member per entry of the env that is QUEUED, LEASED or
                         DEAD: the run's created_ms as 15 zero-padded digits, then the run id. With equal
                         scores a ZSET orders by member bytes, so ZRANGE … BYLEX walks the entries by
                         (created_ms, run id) — the order of the run list's keyset — from any cursor in
                         O(log N + page), ties included. created_ms is the snapshot's "created_ms": exactly
                         the created_at its Postgres row gets. No script reads it out of the snapshot (a
                         stored snapshot may be compressed, buffer/stored_snapshot.py): the accepting caller
                         passes it, and the entry hash keeps it in the field created_ms only when it differs
                         from accepted_ms (the usual trigger creates the run at its accept time: 0 bytes).
KEYS     none of its own.
ARGV     none.
Returns  nothing; it defines these local functions:
  index_member(created_ms, run)             the member for a run created at created_ms (a digit string)
  index_add(base, env, run, created_ms)     after creating an entry
  index_remove(base, env, run, accepted_ms, created_ms)   when the entry leaves the buffer (ack), with its
                                            hash fields accepted_ms and created_ms (nil when absent): the
                                            member index_add wrote. Returns how many members it removed.
  legacy_index_remove(base, env, run, entry, accepted_ms)  for an entry parked before created_ms was passed
                                            in (its member was cut from its then always plain-JSON snapshot,
                                            regex '"created_ms":(%d+)'): only called when index_remove removed
                                            nothing; a compressed or absent snapshot removes nothing.
Guarantees: called inside the caller's script, so the index changes in the same atomic step as the entry.
]]
local function index_member(created_ms, run)
  return string.rep('0', 15 - #created_ms) .. created_ms .. run
end

local function index_add(base, env, run, created_ms)
  redis.call('ZADD', base .. 'ix:' .. env, 0, index_member(created_ms, run))
end

local function index_remove(base, env, run, accepted_ms, created_ms)
  return redis.call('ZREM', base .. 'ix:' .. env, index_member(created_ms or accepted_ms or '0', run))
end

local function legacy_index_remove(base, env, run, entry, accepted_ms)
  local snapshot = redis.call('GET', snapshot_key(base, run)) or redis.call('HGET', entry, 'snapshot') or ''
  if string.sub(snapshot, 1, 1) ~= '{' then return 0 end
  local created = string.match(snapshot, '"created_ms":(%d+)') or accepted_ms or '0'
  return redis.call('ZREM', base .. 'ix:' .. env, index_member(created, run))
end
