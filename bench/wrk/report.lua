-- Loaded into every wrk run by bench/run.py.
-- When BENCH_BODY_BYTES is set, each request is a POST carrying that many bytes.
-- At the end it prints one line, "BENCH_JSON {...}", with exact counts and latency
-- percentiles in microseconds, so the runner need not parse wrk's rounded text.

local size = tonumber(os.getenv("BENCH_BODY_BYTES") or "0") or 0
if size > 0 then
  wrk.method = "POST"
  wrk.body = string.rep("p", size)
  wrk.headers["Content-Type"] = "application/octet-stream"
end

done = function(summary, latency, requests)
  local pct = {}
  for _, q in ipairs({50, 75, 90, 99, 99.9}) do
    pct[#pct + 1] = string.format('"p%s":%d', tostring(q):gsub("%.", "_"), latency:percentile(q))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"max":%d,"mean":%.1f,"stdev":%.1f,%s}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.max, latency.mean, latency.stdev, table.concat(pct, ",")))
end
