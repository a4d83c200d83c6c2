-- Whether an attempt's ending call (finish, park, hand back), which found the attempt's lease
-- gone, is that same call made again after its reply was lost: the first run left the job
-- with this attempt's token as its worker, and the call's own status and time.
local function replayed(job_key, token, status, now)
  local job = redis.call("HMGET", job_key, "worker", "status", "updated_at")
  return job[1] == token and job[2] == status and job[3] == now
end
