"""``rlyard worker``: a Celery rollout worker (``trainer.workers``) in the foreground.

Configured from ``RLYARD_WORKERS_*`` (flags override). It runs up to ``concurrency`` groups at
once on Celery's thread pool, all on one event loop and one sampler per weight version.
``--include MODULE`` imports a module first (a plug-in that registers a sampler kind).
``--ready-file`` is written once the worker consumes from its queue.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

from rlyard.errors import ConfigError


def run(ns: argparse.Namespace) -> int:
    """Start the worker; returns when it stops."""
    import redis
    from celery.signals import worker_ready, worker_shutdown

    from trainer.workers import job
    from trainer.workers.app import make_app
    from trainer.workers.settings import WorkerSettings, masked

    logging.basicConfig(level=logging.DEBUG if ns.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # a finished group's whole result would go to the log line of its success: failures only
    logging.getLogger("celery.app.trace").setLevel(logging.WARNING)
    settings = WorkerSettings.from_env("RLYARD_WORKERS")
    overrides: dict[str, Any] = {k: v for k, v in (("broker_url", ns.broker), ("queue", ns.queue),
                                                    ("concurrency", ns.concurrency)) if v is not None}
    settings = settings.replaced(overrides, "rlyard worker")
    for module in ns.include:
        importlib.import_module(module)
    for url in {settings.broker_url, settings.backend_url}:
        try:
            redis.Redis.from_url(url, socket_connect_timeout=settings.connect_timeout_s).ping()
        except redis.RedisError as exc:
            raise ConfigError(f"the workers' broker or result backend at {masked(url)} does not answer ({exc}); start "
                              "redis-server there or set RLYARD_WORKERS_BROKER_URL / _RESULT_URL") from None
    app = make_app(settings)
    job.configure(settings)
    name = ns.name or f"rlyard-worker-{os.getpid()}@{socket.gethostname()}"
    ready_file: Path | None = ns.ready_file

    @worker_ready.connect(weak=False)
    def _ready(**_: Any) -> None:
        if ready_file is not None:
            tmp = ready_file.with_suffix(".tmp")
            # no URLs or tokens: they may hold secrets
            tmp.write_text(json.dumps({"name": name, "pid": os.getpid(), "queue": settings.queue,
                                       "concurrency": settings.concurrency}))
            tmp.rename(ready_file)

    @worker_shutdown.connect(weak=False)
    def _stop(**_: Any) -> None:
        job.shutdown()

    app.worker_main(["worker", "--pool=threads", f"--concurrency={settings.concurrency}", "-Q", settings.queue,
                     "-n", name, "--loglevel=DEBUG" if ns.verbose else "--loglevel=INFO",
                     "--without-gossip", "--without-mingle", "--without-heartbeat"])
    return 0


def add_parser(sub: Any) -> None:
    """``rlyard worker`` and its flags."""
    p = sub.add_parser("worker", help="run a Celery rollout worker (RLYARD_WORKERS_* settings)")
    p.add_argument("--broker", help="Redis URL of the broker (default: RLYARD_WORKERS_BROKER_URL)")
    p.add_argument("--queue", help="queue to consume (default: RLYARD_WORKERS_QUEUE)")
    p.add_argument("--concurrency", type=int, help="groups rolled out at once (default: RLYARD_WORKERS_CONCURRENCY)")
    p.add_argument("--include", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (a plug-in registering a sampler kind); repeatable")
    p.add_argument("--name", help="the worker's node name (default: rlyard-worker-PID@host)")
    p.add_argument("--ready-file", type=Path, help="written once the worker consumes its queue")
    p.set_defaults(fn=run)
