-- POST /users with a name no run has used: the run's tag, the thread and a
-- counter. Letters keep it apart from the seeded names, digits only.
dofile(os.getenv("BENCH_SCRIPTS") .. "/common.lua")
function request()
   counter = counter + 1
   return wrk.format("POST", "/users", json, '{"name":"c' .. run .. "-" .. tid .. "-" .. counter .. '"}')
end
