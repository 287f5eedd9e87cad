-- common.lua starts every wrk script of cmd/bench (dofile). It numbers
-- the threads, and its done function prints the run as one JSON line,
-- since wrk's own summary rounds the latencies.
--
-- Arguments after wrk's "--": the run's tag (unique per run, for new
-- names), the number of seeded users (ids 1 to seed, each named for its
-- id), then the range of positions after which a page of 100 of the
-- seeded changes is full.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("tid", #threads)
end

function init(args)
   run = tonumber(args[1] or "1")
   seed = tonumber(args[2] or "1")
   after_lo, after_hi = tonumber(args[3] or "0"), tonumber(args[4] or "0")
   counter, expected, unexpected = 0, 0, 0
   math.randomseed(run * 1000 + tid) -- reproducible per run, different per thread
end

-- The service requires a bearer token, as it should in production; bench
-- makes one up and hands it over in USERSVC_TOKEN. wrk sends wrk.headers
-- with every request that names no headers of its own.
bearer = "Bearer " .. assert(os.getenv("USERSVC_TOKEN"), "USERSVC_TOKEN is not set")
wrk.headers["Authorization"] = bearer
json = { ["Content-Type"] = "application/json", ["Authorization"] = bearer }

function done(summary, latency, requests)
   local exp, unexp = 0, 0
   for _, t in ipairs(threads) do
      exp = exp + (t:get("expected") or 0)
      unexp = unexp + (t:get("unexpected") or 0)
   end
   local e = summary.errors
   io.write(string.format('BENCH_RESULT {"requests":%d,"duration_us":%d,' ..
      '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d,"status_errors":%d,' ..
      '"p50_us":%d,"p99_us":%d,"max_us":%d,"expected":%d,"unexpected":%d}\n',
      summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout, e.status,
      latency:percentile(50), latency:percentile(99), latency.max, exp, unexp))
   if done_more then -- a script may print more, on lines of its own
      done_more(threads)
   end
end
