"""The queue as a worker consumes it: kombu's Redis transport (``broker``), the pool that hands each
job from Celery's consumer to the worker's loop (``pool``), and the recovery of jobs whose
message or worker was lost (``recovery``). The message itself and every key involved are in
``shared/queue.py`` and ``shared/keys.py``."""
