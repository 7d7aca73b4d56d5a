-- wrk script of `python -m bench http`: one order per POST, each with its own order_id (run prefix,
-- thread number, counter) and user, and the answers counted by HTTP status in every thread.
-- wrk arguments after `--`: <run prefix> <sku> <unit price>. `done` prints one line "BENCH {json}".
local threads = {}
local started = 0

function setup(thread)
  started = started + 1
  thread:set("tid", started)
  table.insert(threads, thread)
end

function init(args)
  run = args[1] or "r"
  sku = args[2] or "sku"
  price = args[3] or "100"
  n = 0
  counts = {}
  headers = {["Content-Type"] = "application/json"}
end

function request()
  n = n + 1
  local id = run .. "-" .. tid .. "-" .. n
  local body = '{"order_id":"' .. id .. '","user_id":"u' .. id .. '","room_id":"bench-room","sku":"' .. sku
    .. '","qty":1,"unit_price":' .. price .. '}'
  return wrk.format("POST", nil, headers, body)
end

function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for status, count in pairs(t:get("counts")) do
      total[status] = (total[status] or 0) + count
    end
  end
  local parts = {}
  for status, count in pairs(total) do
    table.insert(parts, string.format('"%d":%d', status, count))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
    .. '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f},"statuses":{%s}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    table.concat(parts, ",")))
end
