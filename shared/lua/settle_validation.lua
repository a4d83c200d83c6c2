-- End a batch's validation in the background (api/batch_validation.py), fenced by its lease: the
-- lines it staged become the batch's pending lines and the batch runs (or, if the batch was
-- cancelled meanwhile, is wound down by the feeder); or, with bad lines, it fails whole.
-- A validation whose lease another process took over (it stalled past the lease) changes nothing.
-- KEYS: 1 batch hash, 2 validation lease, 3 this validation's staged lines, 4 pending lines,
--       5 active batches (the batch's shard's), 6 batch results, 7 batch errors
-- ARGV: 1 lease token, 2 now, 3 lines read, 4 bad lines, 5 errors (JSON), 6 window s,
--       7 retention s, 8 batch id
-- Returns 1, or 0 when the lease is not this validation's.
if redis.call("GET", KEYS[2]) ~= ARGV[1] then
  return 0
end
local total = tonumber(ARGV[3])
redis.call("HSET", KEYS[1], "validated_at", ARGV[2])
if tonumber(ARGV[4]) > 0 then
  redis.call("DEL", KEYS[3])
  -- Nothing ran: every line counts as failed, so that the counts add up.
  redis.call("HSET", KEYS[1], "status", "failed", "failed_at", ARGV[2], "total", total, "failed", total,
             "errors", ARGV[5])
else
  if redis.call("EXISTS", KEYS[3]) == 1 then
    redis.call("RENAME", KEYS[3], KEYS[4])
  end
  local created = tonumber(redis.call("HGET", KEYS[1], "created_at"))
  if not redis.call("HGET", KEYS[1], "ending") then
    redis.call("HSET", KEYS[1], "status", "in_progress", "in_progress_at", ARGV[2])
  end
  redis.call("HSET", KEYS[1], "total", total, "expires_at", tostring(created + tonumber(ARGV[6])))
  redis.call("ZADD", KEYS[5], created, ARGV[8])
end
for i = 1, 7 do
  if i ~= 2 and i ~= 3 and i ~= 5 then redis.call("EXPIRE", KEYS[i], ARGV[7]) end
end
redis.call("DEL", KEYS[2])
return 1
