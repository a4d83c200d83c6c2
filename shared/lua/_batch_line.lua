-- Included by the scripts that finish a job: if the job is a batch line, append its result
-- or error line, count it, and finalize the batch when every line is accounted for.
local function batch_line_done(job_key, batch_key, results_key, errors_key, inflight_key, active_key,
                               local_inflight_key, status, now, job_id)
  local info = redis.call("HMGET", job_key, "batch_id", "custom_id", "result", "error", "model", "queue")
  if not info[1] then return end
  local head = '{"custom_id":' .. cjson.encode(info[2] or "") .. ',"job_id":' .. cjson.encode(job_id)
    .. ',"model":' .. cjson.encode(info[5] or "") .. ',"finished_at":' .. math.floor(tonumber(now))
  if status == "succeeded" then
    redis.call("RPUSH", results_key, head .. ',"response":{"status_code":200,"body":' .. info[3] .. '},"error":null}')
    redis.call("HINCRBY", batch_key, "completed", 1)
  else
    local err = info[4]
    if not err then
      local ending = redis.call("HGET", batch_key, "ending")
      local code = ending and ("batch_" .. ending) or "cancelled"
      err = cjson.encode({code = code, message = "the request was " .. (ending or "cancelled") .. " before it finished"})
    end
    redis.call("RPUSH", errors_key, head .. ',"response":null,"error":' .. err .. '}')
    redis.call("HINCRBY", batch_key, "failed", 1)
  end
  if tonumber(redis.call("DECR", inflight_key)) < 0 then redis.call("SET", inflight_key, 0) end
  if info[6] == "chatfleet.local" and tonumber(redis.call("DECR", local_inflight_key)) < 0 then
    redis.call("SET", local_inflight_key, 0)
  end
  local b = redis.call("HMGET", batch_key, "total", "completed", "failed", "ending", "status")
  local done = (tonumber(b[2]) or 0) + (tonumber(b[3]) or 0)
  if b[1] and done >= tonumber(b[1]) and b[5] ~= "completed" and b[5] ~= "cancelled" and b[5] ~= "expired" then
    local final = b[4] or "completed"
    redis.call("HSET", batch_key, "status", final, "finalizing_at", now, final .. "_at", now)
    redis.call("ZREM", active_key, info[1])
  end
end
