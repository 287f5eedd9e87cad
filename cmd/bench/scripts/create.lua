-- Scenario 3: POST /users with a name no run has used: the run tag, the
-- thread and a counter. Letters keep it apart from the seeded names, which
-- are digits only.
function request()
   counter = counter + 1
   return wrk.format("POST", "/users", json,
      '{"name":"c' .. run .. "-" .. tid .. "-" .. counter .. '"}')
end
