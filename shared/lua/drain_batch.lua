-- A cancelled or expired batch: turn up to N lines that were never handed out into error
-- lines, count them, and finalize the batch when every line is accounted for.
-- KEYS: 1 batch hash, 2 pending list, 3 errors list, 4 active batches
-- ARGV: 1 max lines, 2 error code, 3 message, 4 now, 5 batch id
-- Returns the number of lines drained.
local lines = redis.call("LPOP", KEYS[2], tonumber(ARGV[1]))
if not lines then lines = {} end
local err = cjson.encode({code = ARGV[2], message = ARGV[3]})
for _, line in ipairs(lines) do
  local entry = cjson.decode(line)
  redis.call("RPUSH", KEYS[3], '{"custom_id":' .. cjson.encode(entry.custom_id) .. ',"job_id":null,"response":null,"error":' .. err .. '}')
end
if #lines > 0 then redis.call("HINCRBY", KEYS[1], "failed", #lines) end
local b = redis.call("HMGET", KEYS[1], "total", "completed", "failed", "ending", "status")
local done = (tonumber(b[2]) or 0) + (tonumber(b[3]) or 0)
if b[1] and done >= tonumber(b[1]) and b[5] ~= "completed" and b[5] ~= "cancelled" and b[5] ~= "expired" then
  local final = b[4] or "completed"
  redis.call("HSET", KEYS[1], "status", final, "finalizing_at", ARGV[4], final .. "_at", ARGV[4])
  redis.call("ZREM", KEYS[4], ARGV[5])
end
return #lines
