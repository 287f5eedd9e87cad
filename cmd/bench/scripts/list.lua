-- Scenario 2: a 50-user page after a random id (lo..hi), so every page is
-- full.
function request()
   return wrk.format("GET", "/users?after=" .. math.random(lo, hi) .. "&limit=50")
end
