-- Append events to the streams of one or more jobs and publish them live, each job fenced by
-- its attempt's lease: the publishes of every running job of a worker process go together.
-- KEYS: per job, 4: events stream, live channel, lease, cancel flag
-- ARGV: max stream length, retention s, then per job: attempt token, event count n, and n
--       (seq, type, data) triples
-- Returns, per job: -1 when the attempt lost the job (nothing written); the error text when an
-- event could not be appended (its id did not grow, or Redis refused the write: the events
-- before it are written and published, those from it on are not); else 1 if a cancel was
-- requested, 0 if not. An event already in the stream with the same id, type and data is a
-- replay (a call retried after its reply was lost) and is skipped, not an error.
local out = {}
local a = 3
for k = 0, #KEYS - 4, 4 do
  local token, n = ARGV[a], tonumber(ARGV[a + 1])
  local first, last = a + 2, a + 1 + 3 * n
  a = last + 1
  if redis.call("GET", KEYS[k + 3]) ~= token then
    out[#out + 1] = -1
  else
    local result = nil
    for i = first, last, 3 do
      local id = "0-" .. ARGV[i]
      local added = redis.pcall("XADD", KEYS[k + 1], "MAXLEN", "~", ARGV[1], id, "t", ARGV[i + 1], "d", ARGV[i + 2])
      if type(added) == "table" and added.err then
        local there = redis.call("XRANGE", KEYS[k + 1], id, id)[1]
        if not (there and there[2][2] == ARGV[i + 1] and there[2][4] == ARGV[i + 2]) then
          result = added.err
          break
        end
      else
        redis.call("PUBLISH", KEYS[k + 2], ARGV[i] .. "\n" .. ARGV[i + 1] .. "\n" .. ARGV[i + 2])
      end
    end
    redis.call("EXPIRE", KEYS[k + 1], ARGV[2])
    out[#out + 1] = result or redis.call("EXISTS", KEYS[k + 4])
  end
end
return out
