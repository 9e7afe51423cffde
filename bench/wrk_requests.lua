-- wrk script for bench/ingest.py (run through bench/wrk.py): sends pre-built raw HTTP requests
-- read from a file, checks every answer, and writes its counts and wrk's latency histogram to a
-- file when wrk is done.
--
-- Environment:
--   BENCH_WRK_REQUESTS  the requests, each as "<length in bytes>\n<bytes>"
--   BENCH_WRK_CYCLE     "1": send them round and round; otherwise each at most once, and a
--                       thread that has none left stops (counted as "exhausted")
--   BENCH_WRK_EXPECT    a substring every answer's body must contain (besides status 200)
--   BENCH_WRK_THREADS   wrk's -t: thread k of n sends requests k, k + n, k + 2n, ...
--   BENCH_WRK_OUT       where done() writes "name value" lines and "latency <us> <count>" lines

local threads = {}

function setup(thread)
   thread:set("thread_index", #threads)
   table.insert(threads, thread)
end

function init(args)
   io.stdout:setvbuf("line")  -- so that bench/wrk.py sees "Running ..." when wrk starts
   local count = tonumber(os.getenv("BENCH_WRK_THREADS")) or 1
   local file = assert(io.open(os.getenv("BENCH_WRK_REQUESTS"), "rb"))
   local data = file:read("*a")
   file:close()
   requests = {}
   local position, index = 1, 0
   while position <= #data do
      local newline = assert(string.find(data, "\n", position, true), "bad requests file")
      local length = tonumber(string.sub(data, position, newline - 1))
      if index % count == thread_index then
         requests[#requests + 1] = string.sub(data, newline + 1, newline + length)
      end
      index = index + 1
      position = newline + length + 1
   end
   assert(#requests > 0, "no requests for this thread")
   cycle = os.getenv("BENCH_WRK_CYCLE") == "1"
   expect = os.getenv("BENCH_WRK_EXPECT") or ""
   sent, answered, wrong, kept_alive, exhausted = 0, 0, 0, 0, 0
   first_error = ""
   -- wrk calls request() once on its first thread before connecting, only to check that the
   -- request parses: that call must not use up a request.
   verifying = thread_index == 0
end

function request()
   if verifying then
      verifying = false
      return requests[1]
   end
   if sent >= #requests and not cycle then
      if exhausted == 0 then
         exhausted = 1
         wrk.thread:stop()
      end
      return ""  -- nothing is sent on this connection
   end
   sent = sent + 1
   return requests[(sent - 1) % #requests + 1]
end

function response(status, headers, body)
   answered = answered + 1
   if status ~= 200 or not string.find(body, expect, 1, true) then
      wrong = wrong + 1
      if first_error == "" then
         first_error = string.gsub(status .. " " .. string.sub(body, 1, 300), "%c", " ")
      end
   end
   if (headers["Connection"] or headers["connection"]) ~= "close" then
      kept_alive = kept_alive + 1
   end
end

function done(summary, latency, requests)
   local out = assert(io.open(os.getenv("BENCH_WRK_OUT"), "w"))
   local totals = {sent = 0, answered = 0, wrong = 0, kept_alive = 0, exhausted = 0}
   local first = ""
   for _, thread in ipairs(threads) do
      for name, value in pairs(totals) do
         totals[name] = value + thread:get(name)
      end
      if first == "" then
         first = thread:get("first_error")
      end
   end
   for name, value in pairs(totals) do
      out:write(name, " ", value, "\n")
   end
   out:write("duration_us ", summary.duration, "\n")
   out:write("requests ", summary.requests, "\n")
   for name, value in pairs(summary.errors) do
      out:write("socket_", name, " ", value, "\n")
   end
   out:write("first_error ", first, "\n")
   -- wrk's histogram as done() gets it: one line per distinct latency (microseconds).
   for i = 1, #latency do
      local us, count = latency(i)
      out:write("latency ", us, " ", count, "\n")
   end
   out:close()
end
