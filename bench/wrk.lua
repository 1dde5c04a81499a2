-- POST the body in BENCH_BODY to the URL wrk was given (its path is the mode's:
-- chat, embeddings, responses); at the end print one JSON line of figures.
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench-7f3a9c2e5b1d4f6a8e0c3b5d7f9a1c3e"

local points = {1, 5, 10, 20, 30, 40, 50, 60, 70, 75, 80, 85, 90, 95, 97.5, 99, 99.5, 99.9, 99.99}

function done(summary, latency, requests)
  local parts = {}
  for _, p in ipairs(points) do
    parts[#parts + 1] = string.format('"%g":%d', p, latency:percentile(p))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_mean_us":%f,"latency_max_us":%d,"percentiles_us":{%s}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, table.concat(parts, ",")))
end
