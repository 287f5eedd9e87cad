-- Scenario 1: GET /users/{id} of a random existing id (lo..hi).
function request()
   return wrk.format("GET", "/users/" .. math.random(lo, hi))
end
