-- common.lua comes first in every wrk script the benchmark writes. It gives
-- each thread a number and its own random sequence, and its done function
-- prints the whole run as one JSON line that cmd/bench parses, since wrk's
-- human-readable summary rounds latencies and leaves out the percentiles.
--
-- Arguments after wrk's "--": run tag (a positive integer, unique per run),
-- then the scenario's lo and hi (an id or name range).

local threads = {}
local nthreads = 0

function setup(thread)
   nthreads = nthreads + 1
   thread:set("tid", nthreads)
   table.insert(threads, thread)
end

function init(args)
   run = tonumber(args[1] or "1")
   lo = tonumber(args[2] or "1")
   hi = tonumber(args[3] or "1")
   counter = 0
   expected = 0
   unexpected = 0
   -- Reproducible per run and different per thread.
   math.randomseed(run * 1000 + tid)
end

-- The service requires a bearer token, as it should in production; bench
-- makes one up for each run and hands it over in USERSVC_TOKEN. wrk sends
-- wrk.headers with every request that names no headers of its own.
bearer = "Bearer " .. assert(os.getenv("USERSVC_TOKEN"), "USERSVC_TOKEN is not set")
wrk.headers["Authorization"] = bearer

-- json is the header set of the requests with a body.
json = { ["Content-Type"] = "application/json", ["Authorization"] = bearer }

function done(summary, latency, requests)
   local exp, unexp = 0, 0
   for _, t in ipairs(threads) do
      exp = exp + (t:get("expected") or 0)
      unexp = unexp + (t:get("unexpected") or 0)
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,' ..
      '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%.1f,' ..
      '"expected":%d,"unexpected":%d}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.max, latency.mean,
      exp, unexp))
   -- A script may print more of the run after it, on lines of its own.
   if done_more then
      done_more(threads)
   end
end
