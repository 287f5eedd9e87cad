-- GET /users/{id} of a random seeded user.
dofile(os.getenv("BENCH_SCRIPTS") .. "/common.lua")
function request()
   return wrk.format("GET", "/users/" .. math.random(1, seed))
end
