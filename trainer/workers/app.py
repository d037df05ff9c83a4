"""The Celery app of the rollout workers: Redis as broker and result backend, JSON only, late acks.

A group is acknowledged only when it is done (``task_acks_late``); a worker process that dies
mid-group leaves it unacknowledged, and Redis hands it out again once ``visibility_timeout_s`` has
passed (a pool child that dies is rejected back at once: ``task_reject_on_worker_lost``). Each
worker reserves one group per slot (``worker_prefetch_multiplier = 1``), so a dead worker strands
no queue of groups behind the one it was running. Every attempt at a group counts itself under
the group's key in Redis (``attempt`` in the result): the trainer sees which groups were redone.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from celery import Celery, Task

from trainer.workers.settings import WorkerSettings

logger = logging.getLogger(__name__)

GROUP_TASK = "rlyard.rollout_group"
ATTEMPTS_PREFIX = "rlyard:group-attempts:"


def make_app(settings: WorkerSettings) -> Celery:
    """A Celery app on ``settings``' broker and backend with the group task registered."""
    app = Celery("rlyard", broker=settings.broker_url, backend=settings.backend_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,   # a group that raised is answered (FAILURE), not redone forever
        worker_prefetch_multiplier=1,
        task_default_queue=settings.queue,
        task_track_started=False,               # a redelivery never turns a stored SUCCESS back into STARTED
        result_expires=int(settings.result_ttl_s),
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            "unacked_restore_interval": settings.restore_interval_s,
            "unacked_restore_throttle": 1,
            "socket_connect_timeout": settings.connect_timeout_s,
        },
        redis_socket_connect_timeout=settings.connect_timeout_s,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=settings.connect_timeout_s,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5,
                                   "interval_max": 1.0},
    )
    app.task(name=GROUP_TASK, bind=True)(_rollout_group)
    return app


def _rollout_group(self: Task, payload: dict[str, Any]) -> dict[str, Any]:
    """The Celery task: one group job in (``GroupJob.to_json``), its result out (``GroupResult.to_json``)."""
    from trainer.workers.job import runtime
    from trainer.workers.wire import GroupJob

    job = GroupJob.from_json(payload)
    task_id = self.request.id or job.key
    stored = self.AsyncResult(task_id)
    if stored.state == "SUCCESS":   # an earlier attempt finished but died before its ack: the same group
        logger.info("group %s: already finished (redelivered after its result was stored)", job.key)
        result: dict[str, Any] = stored.result
        return result
    client = self.app.backend.client
    attempt = int(client.incr(ATTEMPTS_PREFIX + job.key))
    client.expire(ATTEMPTS_PREFIX + job.key, int(self.app.conf.result_expires or 86400))
    if attempt > 1:
        logger.warning("group %s: attempt %d (an earlier delivery did not finish)", job.key, attempt)
    worker = str(self.request.hostname or socket.gethostname())
    return runtime().run_group(job, attempt=attempt, worker=worker).to_json()
