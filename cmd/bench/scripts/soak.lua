-- soak.lua: the mixed workload of `bench soak` (make soak). Arguments as
-- common.lua's.
--
-- Every request has one answer it must get. A thread's connections answer
-- in any order, so the request's kind travels in its X-Request-ID
-- ("soak.<kind>.<thread>.<n>"), which the service echoes; response() reads
-- it back and checks the answer against the kind's. Kinds, in requests per
-- hundred:
--
--   get      40  GET /users/{id}, a seeded user                      200
--   list     20  GET /users?after=<random>&limit=<1..100>            200
--   create   12  POST /users, a name nobody has used                 201
--   delete   10  DELETE /users/{id}, a user this thread created,     204
--                each once (a create instead while it has none)
--   rename   10  PUT /users/{id}, a seeded user of the upper half,   200
--                to a name nobody has used
--   taken     5  POST /users, the name of a seeded user of the       400 duplicate_name
--                lower half (renames leave those alone)
--   missing   3  GET /users/{id}, an id far above any                404 not_found
--
-- Nothing deletes a seeded user, so gets and renames always find theirs.
dofile(os.getenv("BENCH_SCRIPTS") .. "/common.lua")

expect = {
   get = { status = 200 },
   list = { status = 200 },
   create = { status = 201 },
   delete = { status = 204 },
   rename = { status = 200 },
   taken = { status = 400, code = '"code":"duplicate_name"' },
   missing = { status = 404, code = '"code":"not_found"' },
}

-- Per thread (each thread runs the script in a Lua state of its own):
-- the ids it created and has not deleted yet, and its answers by kind and
-- status, the unexpected ones apart.
mine = {}
answers = {}
wrong = {}

local function send(kind, method, path, body)
   counter = counter + 1
   local headers = { ["X-Request-ID"] = "soak." .. kind .. "." .. tid .. "." .. counter, ["Authorization"] = bearer }
   if body then
      headers["Content-Type"] = "application/json"
   end
   return wrk.format(method, path, headers, body)
end

local function newName(prefix)
   -- counter is the next request's number: unique per thread and run.
   return '{"name":"' .. prefix .. run .. "." .. tid .. "." .. (counter + 1) .. '"}'
end

function request()
   local r = math.random(1, 100)
   local half = math.floor(seed / 2)
   if r <= 40 then
      return send("get", "GET", "/users/" .. math.random(1, seed))
   elseif r <= 60 then
      return send("list", "GET", "/users?after=" .. math.random(0, seed) .. "&limit=" .. math.random(1, 100))
   elseif r <= 70 and #mine > 0 then
      return send("delete", "DELETE", "/users/" .. table.remove(mine))
   elseif r <= 82 then
      return send("create", "POST", "/users", newName("s"))
   elseif r <= 92 then
      return send("rename", "PUT", "/users/" .. math.random(half + 1, seed), newName("r"))
   elseif r <= 97 then
      return send("taken", "POST", "/users", '{"name":"' .. math.random(1, half) .. '"}')
   end
   return send("missing", "GET", "/users/" .. (1000000000000 + math.random(1, 1000000)))
end

function response(status, headers, body)
   local id = headers["X-Request-Id"] or headers["X-Request-ID"] or ""
   local kind = string.match(id, "^soak%.(%a+)%.") or "unknown"
   local want = expect[kind]
   local ok = want ~= nil and status == want.status and
      (want.code == nil or string.find(body, want.code, 1, true) ~= nil)
   if ok and kind == "create" then
      local created = string.match(body, '"id":(%d+)')
      if created then
         table.insert(mine, created)
      else
         ok = false
      end
   end
   local key = kind .. " " .. status
   answers[key] = (answers[key] or 0) + 1
   if ok then
      expected = expected + 1
   else
      unexpected = unexpected + 1
      wrong[key] = (wrong[key] or 0) + 1
   end
end

-- done_more prints, after common.lua's result line, the answers of all
-- threads by kind and status, and the expected status of each kind.
function done_more(threads)
   local all, bad = {}, {}
   for _, t in ipairs(threads) do
      for k, n in pairs(t:get("answers") or {}) do
         all[k] = (all[k] or 0) + n
      end
      for k, n in pairs(t:get("wrong") or {}) do
         bad[k] = (bad[k] or 0) + n
      end
   end
   local function object(m)
      local parts = {}
      for k, v in pairs(m) do
         table.insert(parts, string.format('"%s":%d', k, v))
      end
      table.sort(parts)
      return "{" .. table.concat(parts, ",") .. "}"
   end
   local want = {}
   for kind, w in pairs(expect) do
      want[kind] = w.status
   end
   io.write('SOAK_ANSWERS {"expect":' .. object(want) .. ',"answers":' .. object(all) ..
      ',"unexpected":' .. object(bad) .. '}\n')
end
