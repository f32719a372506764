--[[
entry_accept — the one place a new entry is written (shared by ``accept`` and ``trigger``): the entry hash,
its snapshot key s:<run> (``lib/snapshot.lua``), its place at the tail of the env's queue, the org/env
presence sets, the shard counters (``lib/shard_counts.lua``), the env index (``lib/env_index.lua``) and the
idempotency key's binding.

KEYS     none of its own: the caller passes, in table ``k``, key names it declared (or derived from the
         shard base):
           k.entry     e:<run>           k.queue   q:<env>
           k.org_envs  org:<org>:envs    k.orgs    orgs
           k.idem      idem:<env>:…  or nil (no task-level idempotency key)
           k.base      the shard key base "<prefix>:{m<k>}:" (for keys derived from it)
ARGV     none: the caller passes, in table ``a``:
           a.run, a.env, a.org   ids (strings)
           a.snapshot            the stored snapshot (plain JSON or compressed bytes, buffer/stored_snapshot.py),
                                 stored byte-for-byte and never read
           a.created_ms          the snapshot's created_ms (digit string), its env index position
           a.now_ms              accept time
           a.idem_ttl_ms         PX of k.idem (only with k.idem)
Returns  nothing; it defines ``entry_accept(k, a)``. The caller has made every check (closed, duplicate,
         idempotency holder, cap) before calling it: this function only writes.
Guarantees: called inside the caller's script, so every write lands in the same atomic step as the
caller's checks. Callers and this signature stay as they are: anything more an entry needs written at
creation (a counter, an index) is added here, once, with the keys it needs added to ``k``.
]]
local function entry_accept(k, a)
  if k.idem then
    redis.call('SET', k.idem, a.run, 'PX', a.idem_ttl_ms)
  end
  -- attempts and materialised are left out while 0: every reader takes an absent one as 0 (32 B an entry).
  redis.call('HSET', k.entry, 'env', a.env, 'org', a.org, 'status', 'QUEUED', 'accepted_ms', a.now_ms)
  -- created_ms only when it is not accepted_ms (ack rebuilds the index member from the hash alone).
  if a.created_ms ~= a.now_ms then redis.call('HSET', k.entry, 'created_ms', a.created_ms) end
  redis.call('SET', snapshot_key(k.base, a.run), a.snapshot)
  redis.call('RPUSH', k.queue, a.run)
  presence_join(k.orgs, k.org_envs, a.org, a.env)
  queue_moved(k.base, a.org, a.env, 1)
  index_add(k.base, a.env, a.run, a.created_ms)
end
