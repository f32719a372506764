--[[
presence — the prelude every buffer script is registered with (``buffer.scripts``): the one invariant that
several scripts must keep, written once.

Invariant: an env is in its org's set ``org:<org>:envs`` iff its queue ``q:<env>`` is non-empty, and an org
is in the shard's ``orgs`` iff it has such an env. The drain only looks at envs and orgs in these sets, so
an env missing from them would never be drained, and one left in them would cost every round a read.

KEYS     none of its own: the callers pass the key names they declared or derived from the shard base.
ARGV     none.
Returns  nothing; it defines two local functions:
  presence_join(orgs, org_envs, org, env)          after pushing onto the env's queue
  presence_leave(queue, orgs, org_envs, org, env)  after removing from the env's queue: if it is now
                                                   empty, the env leaves its org's set and, if that set
                                                   emptied, the org leaves the shard's.
Guarantees: called inside the caller's script, so the sets change in the same atomic step as the queue.
]]
local function presence_join(orgs, org_envs, org, env)
  redis.call('SADD', org_envs, env)
  redis.call('SADD', orgs, org)
end

local function presence_leave(queue, orgs, org_envs, org, env)
  if redis.call('LLEN', queue) == 0 then
    redis.call('SREM', org_envs, env)
    if redis.call('SCARD', org_envs) == 0 then redis.call('SREM', orgs, org) end
  end
end

