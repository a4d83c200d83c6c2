-- Put a job's message on its queue, remembering the message and when (for requeue_lost).
local function enqueue(job_key, queue_key, queued_key, job_id, message, now)
  redis.call("HSET", job_key, "message", message)
  redis.call("LPUSH", queue_key, message)
  redis.call("ZADD", queued_key, now, job_id)
end
