-- Scenario 5: PUT /users/{id} of a random id (lo..hi) to a name no run has
-- used. The range is apart from scenario 4's names, whose users must keep
-- them.
function request()
   counter = counter + 1
   return wrk.format("PUT", "/users/" .. math.random(lo, hi), json,
      '{"name":"r' .. run .. "-" .. tid .. "-" .. counter .. '"}')
end
