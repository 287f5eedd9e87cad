-- Scenario 7: scenario 3 with an Idempotency-Key, a new one per request as
-- a client sends for each new create: what the key costs beside scenario 3.
function request()
   counter = counter + 1
   local id = run .. "-" .. tid .. "-" .. counter
   return wrk.format("POST", "/users",
      { ["Content-Type"] = "application/json", ["Authorization"] = bearer, ["Idempotency-Key"] = "k" .. id },
      '{"name":"i' .. id .. '"}')
end
