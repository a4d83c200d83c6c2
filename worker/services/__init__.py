"""What every worker process runs beside its jobs, each a ``Service`` (``base.py``) on the
process's loop: the lease keeper (``leases``), the heartbeat (``heartbeat``), the reaper of lost
jobs (``reaper``), the throttle scheduler (``throttle``), the batch feeder (``batch_feeder``) and
the webhooks' fan-out and delivery (``webhooks``). The fleet-wide ones run in one worker at a
time, under a lock in Redis."""
