--[[
env_index — the per-env index of the entries still in the buffer, which lets a run list page over buffered
runs newest first with bounded work (docs/architecture.md#env-index). Prepended to every script.

Key, derived from the shard base "<prefix>:{m<k>}:":
  base .. "ix:" .. env   ZSET, every score 0, one member per entry of the env that is QUEUED, LEASED or
                         DEAD: the run's created_ms as 15 zero-padded digits, then the run id. With equal
                         scores a ZSET orders by member bytes, so ZRANGE … BYLEX walks the entries by
                         (created_ms, run id) — the order of the run list's keyset — from any cursor in
                         O(log N + page), ties included. created_ms is the snapshot's "created_ms": exactly
                         the created_at its Postgres row gets.
KEYS     none of its own.
ARGV     none.
Returns  nothing; it defines these local functions:
  snapshot_created_ms(snapshot, fallback)   the snapshot's top-level "created_ms" as a digit string (the
                                            first key of that name: the snapshot writer puts it before
                                            payload and metadata, and a JSON string cannot hold an
                                            unescaped '"created_ms":'), else fallback (accepted_ms)
  index_member(created_ms, run)             the member for a run created at created_ms (a digit string)
  index_add(base, env, run, snapshot, accepted_ms)   after creating an entry
  index_remove(base, env, run, entry)       when the entry (hash key ``entry``) leaves the buffer (ack);
                                            reads its snapshot and accepted_ms to rebuild its member
Guarantees: called inside the caller's script, so the index changes in the same atomic step as the entry.
]]
local function snapshot_created_ms(snapshot, fallback)
  return string.match(snapshot, '"created_ms":(%d+)') or fallback
end

local function index_member(created_ms, run)
  return string.rep('0', 15 - #created_ms) .. created_ms .. run
end

local function index_add(base, env, run, snapshot, accepted_ms)
  redis.call('ZADD', base .. 'ix:' .. env, 0, index_member(snapshot_created_ms(snapshot, accepted_ms), run))
end

local function index_remove(base, env, run, entry)
  local f = redis.call('HMGET', entry, 'accepted_ms', 'snapshot')
  local snapshot = redis.call('GET', snapshot_key(base, run)) or f[2] or ''
  redis.call('ZREM', base .. 'ix:' .. env, index_member(snapshot_created_ms(snapshot, f[1] or '0'), run))
end
