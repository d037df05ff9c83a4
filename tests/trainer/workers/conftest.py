"""Fixtures of the Celery worker tests: a real ``redis-server`` per test (127.0.0.1, a temp dir,
killed at teardown), the ``wait`` tool server and the reward service, and real ``rlyard worker``
processes (each in its own process group, so a test can SIGKILL a whole worker)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench.rollout import tool_server
from bench.workers import WorkerProcess, redis_server
from reward_service.app import reward_service
from reward_service.settings import RewardSettings
from rlyard.server import RunningServer, start_server
from rlyard.settings import ServerSettings
from trainer.rollout import EngineThread

# short enough that a test sees a dead worker's group handed out again within seconds
VISIBILITY_TIMEOUT_S = 4.0
WORKER_ENV = {"RLYARD_WORKERS_VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S),
              "RLYARD_WORKERS_RESTORE_INTERVAL_S": "0.5"}


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A throwaway redis-server's URL."""
    with redis_server(tmp_path / "redis") as url:
        yield url


@pytest.fixture
def wait_tools(tmp_path: Path) -> Iterator[str]:
    """The ``wait`` tool server (lognormal latency, ``bench/latency_tool.py``) in its own process."""
    with tool_server(tmp_path) as address:
        yield address


@pytest.fixture
def reward_target() -> Iterator[str]:
    """A reward service with ``qa_em`` on its own event loop; its address."""
    with EngineThread(name="reward-service") as thread:
        async def up() -> RunningServer:
            return await start_server(reward_service(RewardSettings(rewards=("qa_em",))),
                                      ServerSettings(host="127.0.0.1", port=0))

        running = thread.run(up(), timeout=60)
        yield running.address
        thread.run(running.stop(0), timeout=30)


StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def start_worker(redis_url: str, tmp_path: Path) -> Iterator[StartWorker]:
    """Factory: ``start_worker(name, concurrency=1)`` starts ``rlyard worker`` (with the bench's
    ``forced-tool`` sampler kind) and waits until it consumes; all are stopped at teardown."""
    started: list[WorkerProcess] = []

    def start(name: str, concurrency: int = 1, wait: bool = True) -> WorkerProcess:
        worker = WorkerProcess(redis_url, tmp_path, name, concurrency=concurrency, env=WORKER_ENV)
        started.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.terminate()
    for worker in started:
        worker.close()


@pytest.fixture
def sampler_target(tiny_model_dir: Path, tmp_path: Path) -> Iterator[str]:
    """The sampler service (``trainer.sampler.service``) over the tiny checkpoint on its own event
    loop, serving weight version 2 (published under a weights root); its address."""
    from trainer.policy.hf import HFPolicy
    from trainer.sampler.remote import RemoteSampler
    from trainer.sampler.service import sampler_service
    from trainer.sampler.serving import SamplerHost
    from trainer.sampler.settings import SamplerSettings

    root = tmp_path / "weights"
    with EngineThread(name="sampler-service") as thread:
        async def up() -> RunningServer:
            host = SamplerHost(HFPolicy(tiny_model_dir), model_name="tiny", weights_root=root, poll_s=0.05)
            running = await start_server(sampler_service(SamplerSettings(policy_dir=tiny_model_dir), host=host),
                                         ServerSettings(host="127.0.0.1", port=0))
            await running.wait_ready(30)
            publisher = RemoteSampler(running.address, weights_root=root)
            try:   # publish the checkpoint's weights as version 2 and wait until the service serves them
                await publisher.sync_weights(HFPolicy(tiny_model_dir).model, 2)
            finally:
                await publisher.aclose()
            return running

        running = thread.run(up(), timeout=120)
        yield running.address
        thread.run(running.stop(0), timeout=30)
