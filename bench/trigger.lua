-- wrk script for bench/trigger.py: POSTs a trigger body like the one @trigger.dev/sdk v4 sends (docs/api.md#trigger-a-task)
-- with the SDK's headers, and prints one machine-readable result line.
--
-- Arguments (after `--`): <secret> <nonce> <with_idempotency_key: 1|0>
--   secret  the API key (sent as `Authorization: Bearer <secret>`; any value for the no-op view)
--   nonce   40 hex characters, unique per wrk run, so request and idempotency keys never repeat
-- Every request gets a fresh `x-trigger-request-idempotency-key` (the SDK sends a UUID per call) and,
-- unless disabled, a fresh 64-character `options.idempotencyKey` (what the SDK sends after hashing).
--
-- Output: a line `WRK_RESULT {json}` with requests, duration_us, latency percentiles (µs), socket
-- error counts, how many responses were 200 and how many were not, and one sample non-200 response.

local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  secret, nonce, with_key = args[1], args[2], args[3] == "1"
  counter, ok, bad, sample = 0, 0, 0, ""
  wrk.method = "POST"
  wrk.headers["Authorization"] = "Bearer " .. secret
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["trigger-version"] = "4.8.3"
  wrk.headers["x-trigger-api-version"] = "2025-07-16"
  wrk.headers["x-trigger-source"] = "sdk"
  wrk.headers["x-trigger-realtime-streams-version"] = "v2"
end

local function escape(s)
  return (s:gsub('\\', '\\\\'):gsub('"', '\\"'))
end

function request()
  counter = counter + 1
  local unique = string.format("%s%08x%016x", nonce, tid, counter) -- 64 hex characters
  wrk.headers["x-trigger-request-idempotency-key"] = string.format(
    "%s-%s-%s-%s-%s", unique:sub(1, 8), unique:sub(9, 12), unique:sub(13, 16), unique:sub(41, 48), unique:sub(49, 64)
  )
  local payload = string.format(
    '{"json":{"orderId":"ord_%09d","customerId":"cus_%08d","amount":%d,"currency":"EUR",'
      .. '"items":[{"sku":"SKU-%04d","qty":1},{"sku":"SKU-%04d","qty":2},{"sku":"SKU-%04d","qty":3}],'
      .. '"note":"leave at the door"}}',
    counter, (counter * 7919) % 100000000, 100 + counter % 99900, counter % 10000, (counter * 3) % 10000,
    (counter * 7) % 10000
  )
  local key = ""
  if with_key then
    key = string.format(
      '"idempotencyKey":"%s","idempotencyKeyTTL":"10m","idempotencyKeyOptions":{"key":"order-%s","scope":"run"},',
      unique, unique:sub(41, 64)
    )
  end
  local body = string.format(
    '{"payload":"%s","options":{"queue":{"name":"orders"},"concurrencyKey":"cus_%d",'
      .. '"payloadType":"application/super+json","payloadSize":%d,%s"ttl":"1h","tags":["customer_%d","source_api"],'
      .. '"maxAttempts":3,"metadata":{"source":"checkout"},"maxDuration":300,"machine":"small-1x"}}',
    escape(payload), counter % 1000, #payload, key, counter % 1000
  )
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  if status == 200 then
    ok = ok + 1
  else
    bad = bad + 1
    if sample == "" then
      sample = status .. " " .. (body or ""):sub(1, 300)
    end
  end
end

function done(summary, latency, requests)
  local ok_total, bad_total, first = 0, 0, ""
  for _, thread in ipairs(threads) do
    ok_total = ok_total + thread:get("ok")
    bad_total = bad_total + thread:get("bad")
    if first == "" then
      first = thread:get("sample")
    end
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,'
      .. '"ok":%d,"non_200":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"sample":"%s"}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, ok_total, bad_total, e.connect, e.read, e.write, e.status, e.timeout,
    (escape(first):gsub("%c", " "))
  ))
end
