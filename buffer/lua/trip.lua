--[[
trip — the gate's per-env fixed-window counter and tripped marker, in one call (docs/architecture.md#gate).

KEYS[1]  rate:<env>      HASH {window = window start ms, count}
KEYS[2]  tripped:<env>   STRING: ms until which the env is tripped
KEYS[3]  closed:envs     optional: envs whose intake an operator closed — reported tripped, so every
                         trigger of the env goes to accept, which refuses it (429)
ARGV[1]  now_ms
ARGV[2]  window_ms  (windows are [k*window_ms, (k+1)*window_ms) of now_ms)
ARGV[3]  threshold  (count > threshold within a window trips the env)
ARGV[4]  hold_ms    (tripped until now_ms + hold_ms, extended while the count stays above threshold)
ARGV[5]  env id     (with KEYS[3])

Returns {tripped (1/0), count in the current window after this increment}.
Guarantees: windows and hold are computed from now_ms, never from Redis TTLs, so callers (and tests)
control time; a caller whose clock is behind the stored window counts into the stored window rather than
resetting it. TTLs are set only so idle envs' keys are cleaned up (a minute after they stop mattering).
]]
local rate, tripped, closed = KEYS[1], KEYS[2], KEYS[3]
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local threshold, hold = tonumber(ARGV[3]), tonumber(ARGV[4])
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
if closed and redis.call('SISMEMBER', closed, ARGV[5] or '') == 1 then is_tripped = true end
if is_tripped then return {1, count} end
return {0, count}
