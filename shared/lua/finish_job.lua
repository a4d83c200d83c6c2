-- End an attempt in one step, fenced by its lease: the final job fields, the last events,
-- the release of the job, and its usage, counted exactly once (a job finishes only once).
-- KEYS: 1 job hash, 2 lease, 3 running zset, 4 events stream, 5 live channel,
--       6 account usage hash of the day, 7 account usage days zset, 8 accounts with usage set,
--       9 batch hash, 10 batch results, 11 batch errors, 12 batch in-flight counter,
--       13 active batches, 14 local batch in-flight counter (9-14 used only when the job is a
--       batch line)
-- ARGV: 1 attempt token, 2 status, 3 now, 4 retention s, 5 max stream length, 6 job id,
--       7 model, 8 day, 9 day score, 10 prompt tokens, 11 completion tokens, 12 cost (nano-USD),
--       13 latency ms, 14 usage retention s, 15 n field pairs, field/value pairs...,
--       then (seq, type, data) triples
-- Returns 1, or 0 when the attempt no longer owns the job (nothing written).
--#include _batch_line
--#include _replayed
if redis.call("GET", KEYS[2]) ~= ARGV[1] then
  return replayed(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) and 1 or 0
end
local current = redis.call("HGET", KEYS[1], "status")
if current == "succeeded" or current == "failed" or current == "cancelled" then
  redis.call("DEL", KEYS[2])
  return 0
end
local n = tonumber(ARGV[15])
local fields = {"status", ARGV[2], "updated_at", ARGV[3]}
for i = 16, 15 + 2 * n do fields[#fields + 1] = ARGV[i] end
redis.call("HSET", KEYS[1], unpack(fields))
for i = 16 + 2 * n, #ARGV, 3 do
  redis.call("XADD", KEYS[4], "MAXLEN", "~", ARGV[5], "0-" .. ARGV[i], "t", ARGV[i + 1], "d", ARGV[i + 2])
  redis.call("PUBLISH", KEYS[5], ARGV[i] .. "\n" .. ARGV[i + 1] .. "\n" .. ARGV[i + 2])
end
local function count(prefix)  -- the job's counters, fields {prefix}{counter}
  redis.call("HINCRBY", KEYS[6], prefix .. "requests", 1)
  redis.call("HINCRBY", KEYS[6], prefix .. ARGV[2], 1)
  redis.call("HINCRBY", KEYS[6], prefix .. "prompt_tokens", ARGV[10])
  redis.call("HINCRBY", KEYS[6], prefix .. "completion_tokens", ARGV[11])
  redis.call("HINCRBY", KEYS[6], prefix .. "cost_nanousd", ARGV[12])
  redis.call("HINCRBY", KEYS[6], prefix .. "latency_ms", ARGV[13])
end
local m = ARGV[7] .. "|"
count(m)
local key_id = redis.call("HGET", KEYS[1], "key_id")
if key_id then count("k:" .. key_id .. "|" .. m) end  -- the same, by API key
redis.call("EXPIRE", KEYS[6], ARGV[14])
redis.call("ZADD", KEYS[7], ARGV[9], ARGV[8])
redis.call("EXPIRE", KEYS[7], ARGV[14])
redis.call("SADD", KEYS[8], redis.call("HGET", KEYS[1], "account_id"))
batch_line_done(KEYS[1], KEYS[9], KEYS[10], KEYS[11], KEYS[12], KEYS[13], KEYS[14], ARGV[2], ARGV[3], ARGV[6])
redis.call("DEL", KEYS[2])
redis.call("ZREM", KEYS[3], ARGV[6])
redis.call("EXPIRE", KEYS[1], ARGV[4])
redis.call("EXPIRE", KEYS[4], ARGV[4])
return 1
