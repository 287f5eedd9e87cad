-- GET /users/changes?after=…&limit=100, a full page after a random
-- position among the seeded changes.
dofile(os.getenv("BENCH_SCRIPTS") .. "/common.lua")
function request()
   return wrk.format("GET", "/users/changes?after=" .. math.random(after_lo, after_hi) .. "&limit=100")
end
