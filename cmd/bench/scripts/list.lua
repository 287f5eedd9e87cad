-- GET /users?after=…&limit=50, a full page after a random seeded id.
dofile(os.getenv("BENCH_SCRIPTS") .. "/common.lua")
function request()
   return wrk.format("GET", "/users?after=" .. math.random(0, seed - 51) .. "&limit=50")
end
