--[[
chart_sample — append one sample to the shard's capped chart series (docs/operations.md#dashboard-charts):
the depth and oldest age the caller read (``buffer.stats``) with the shard's drained total read here, so
the drain rate between two samples is a difference of one counter.

KEYS[1]  chart           LIST of samples, newest first: "<t ms>:<depth>:<drained total>:<oldest age ms or -1>"
KEYS[2]  drained:total   entries that ever left the shard (count_drained)
ARGV[1]  now ms: the sample's time
ARGV[2]  min gap ms: a sample closer than this to the newest one is refused
ARGV[3]  cap: the series keeps at most this many samples
ARGV[4]  depth (queued + retrying)
ARGV[5]  oldest age ms, or -1 when nothing waits

Returns 1 if the sample was recorded, 0 if refused (not later than the newest by min gap).
Guarantees: the series stays in strictly decreasing time order from its head (a late or duplicate tick is
refused, never inserted out of order), never holds more than cap samples (LTRIM in the same call), and has
no TTL: a stopped fan-out leaves the last hour as it was, which the dashboard shows as a gap up to now.
]]
local chart, total = KEYS[1], KEYS[2]
local now, gap, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local newest = redis.call('LINDEX', chart, 0)
if newest then
  local t = tonumber(string.match(newest, '^(%-?%d+):'))
  if t and now < t + gap then return 0 end
end
local drained = tonumber(redis.call('GET', total) or '0') or 0
redis.call('LPUSH', chart, ARGV[1] .. ':' .. ARGV[4] .. ':' .. drained .. ':' .. ARGV[5])
redis.call('LTRIM', chart, 0, cap - 1)
return 1
