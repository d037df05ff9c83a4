"""Celery rollout workers on a Redis broker and result backend.

- ``settings``: ``WorkerSettings`` (``RLYARD_WORKERS_*``); ``app``: the Celery app and the group task.
- ``wire``: ``GroupJob`` in, ``GroupResult`` out, JSON-safe; ``job``: a group on a worker.
- ``source``: the trainer's side (``WorkerRollouts``): submit, take finished groups, bounded staleness.
- ``staleness``: the pure staleness rule; ``samplers``: the sampler kinds a job can name.

Import the submodules: this package imports nothing itself, so ``trainer`` does not need Celery.
"""
