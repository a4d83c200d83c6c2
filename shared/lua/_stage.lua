-- Stage a job's message for its queue: kept in the job's hash (field ``message``) and the job
-- listed as queued, in the same step as the job's state. The caller then pushes the message to
-- the broker (``shared.broker``); should it die first, the reaper finds the job queued with its
-- message nowhere and pushes it (requeue_lost). A job is never queued without its record.
local function stage(job_key, queued_key, job_id, message, now)
  redis.call("HSET", job_key, "message", message)
  redis.call("ZADD", queued_key, now, job_id)
end
