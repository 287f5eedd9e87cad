-- Scenario 4: POST /users with a seeded name (the decimal numbers lo..hi),
-- so that every insert fails on the unique constraint. The expected answer
-- is 400 duplicate_name; anything else, another 400 included, is counted as
-- an error. Counting needs a response function, which costs wrk some CPU
-- that the other scenarios do not spend.
function request()
   return wrk.format("POST", "/users", json, '{"name":"' .. math.random(lo, hi) .. '"}')
end

function response(status, headers, body)
   if status == 400 and string.find(body, '"duplicate_name"', 1, true) then
      expected = expected + 1
   else
      unexpected = unexpected + 1
   end
end
