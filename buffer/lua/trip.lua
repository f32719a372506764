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
The counting is ``gate_trip`` (``lib/gate_trip.lua``), shared with ``trigger``.
]]
local is_tripped, count = gate_trip(KEYS[1], KEYS[2], KEYS[3], ARGV[5],
  tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))
if is_tripped then return {1, count} end
return {0, count}
