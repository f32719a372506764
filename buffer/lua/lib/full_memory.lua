--[[
full_memory — lets a script of the drain run when the buffer's Redis is at ``maxmemory`` with ``noeviction``
(docs/operations.md#buffer-memory).

Redis refuses a command flagged ``denyoom`` (SET, HSET, ZADD, RPUSH, INCRBY…) inside a script started while
memory was over ``maxmemory`` only until the script's first write: after a write it cannot stop half way, so
every later write runs (Redis 6.2 ``scripting.c``: ``lua_write_dirty``; Redis 7 ``script.c``:
``SCRIPT_WRITE_DIRTY``, for scripts without a ``#!lua`` flags line, as every script here is). The drain's
scripts free memory overall (an entry leaves the buffer, a lease moves, a lock is taken to drain), so they
open with a write that cannot grow memory: a DEL of a key that never exists, in the slot of ``key`` (the
hash tag is kept, so it is cluster-safe). Redis 7's ``#!lua flags=allow-oom`` would say the same, but a
flags line does not load on the 6.2 servers this project supports.

KEYS/ARGV none: defines ``full_memory_ok(key)``; call it first, with one of the script's KEYS.
Returns  nothing.
Guarantees: the DEL changes nothing (the key, ``<key>:~``, is never written) and is not replicated (it
deletes nothing). Only scripts that free memory call it: the trigger path's scripts stay refused at
``maxmemory``, which is what fails a trigger open to a direct write.
]]
local function full_memory_ok(key)
  redis.call('DEL', key .. ':~')
end
