--[[
gate_trip — the gate's per-env fixed-window counter and tripped marker (docs/architecture.md#gate), shared by
``trip`` (the gate alone) and ``trigger`` (the whole buffered trigger in one call).

KEYS     none of its own: the caller passes the key names it declared:
           rate      rate:<env>      HASH {window = window start ms, count}
           tripped   tripped:<env>   STRING: ms until which the env is tripped
           closed    closed:envs     or nil: envs whose intake an operator closed — reported tripped, so
                                     every trigger of the env goes to accept, which refuses it (429)
ARGV     none: the caller passes env (id string), now, window, threshold, hold (numbers, ms / count).
Returns  nothing; it defines ``gate_trip(rate, tripped, closed, env, now, window, threshold, hold)`` →
         ``is_tripped`` (boolean), ``count`` (triggers in the current window after this one).
Guarantees: windows are [k*window, (k+1)*window) of ``now`` and the hold is computed from ``now``, never from
Redis TTLs, so callers (and tests) control time; a caller whose clock is behind the stored window counts
into the stored window rather than resetting it. count > threshold trips the env until now + hold,
extended while the count stays above. TTLs are set only so idle envs' keys are cleaned up (a minute after
they stop mattering).
]]
local function gate_trip(rate, tripped, closed, env, now, window, threshold, hold)
  local cleanup_ms = 60000
  local window_start = now - (now % window)
  local stored = tonumber(redis.call('HGET', rate, 'window') or '')
  local count
  if stored and stored >= window_start then
    count = redis.call('HINCRBY', rate, 'count', 1)
  else
    redis.call('HSET', rate, 'window', string.format('%d', window_start), 'count', 1)
    count = 1
  end
  redis.call('PEXPIRE', rate, window + cleanup_ms)

  local until_ms = tonumber(redis.call('GET', tripped) or '') or 0
  local is_tripped = now < until_ms
  if count > threshold then
    is_tripped = true
    if now + hold > until_ms then
      redis.call('SET', tripped, string.format('%d', now + hold), 'PX', hold + cleanup_ms)
    end
  end
  if closed and redis.call('SISMEMBER', closed, env or '') == 1 then is_tripped = true end
  return is_tripped, count
end
