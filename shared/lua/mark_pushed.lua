-- RabbitMQ confirmed the job's message whose delivery tag is ARGV[1]: the job's record says so
-- (field ``pushed``), so that the reaper's requeue_lost knows the broker holds that message and
-- leaves the job alone. A job no longer recorded (expired) is not written again.
-- KEYS: job hash
-- ARGV: delivery tag
if redis.call("EXISTS", KEYS[1]) == 1 then
  redis.call("HSET", KEYS[1], "pushed", ARGV[1])
  return 1
end
return 0
