"""Fixtures of the Celery worker tests: a real ``redis-server`` per test (127.0.0.1, a temp dir,
killed at teardown), the ``wait`` tool server, the reward and sampler services (plaintext, or with
mutual TLS and tokens), and real ``rlyard worker`` processes (each in
its own process group, so a test can SIGKILL a whole worker)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import bench.latency_tool  # noqa: F401  (registers the ``wait`` tool)
from bench.rollout import tool_server
from bench.workers import WorkerProcess, redis_server
from reward_service.app import reward_service
from reward_service.settings import RewardSettings
from rlyard.server import RunningServer, start_server
from rlyard.settings import ServerSettings
from tool_servers.app import tool_service
from tool_servers.settings import ToolServerSettings
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


async def _reward(server: ServerSettings) -> RunningServer:
    return await start_server(reward_service(RewardSettings(rewards=("qa_em",))), server)


@pytest.fixture
def reward_target() -> Iterator[str]:
    """A reward service with ``qa_em`` on its own event loop; its address."""
    with EngineThread(name="reward-service") as thread:
        running = thread.run(_reward(ServerSettings(host="127.0.0.1", port=0)), timeout=60)
        yield running.address
        thread.run(running.stop(0), timeout=30)


StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def start_worker(redis_url: str, tmp_path: Path) -> Iterator[StartWorker]:
    """Factory: ``start_worker(name, concurrency=1, env=None)`` starts ``rlyard worker`` (with the
    bench's ``forced-tool`` sampler kind, ``env`` added to its environment) and waits until it
    consumes; all are stopped at teardown."""
    started: list[WorkerProcess] = []

    def start(name: str, concurrency: int = 1, wait: bool = True, env: dict[str, str] | None = None) -> WorkerProcess:
        worker = WorkerProcess(redis_url, tmp_path, name, concurrency=concurrency, env=WORKER_ENV | (env or {}))
        started.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.terminate()
    for worker in started:
        worker.close()


async def _sampler(policy_dir: Path, root: Path, server: ServerSettings, **dial: Any) -> RunningServer:
    """The sampler service over ``policy_dir``, serving weight version 2 (published under ``root``
    through a ``RemoteSampler`` given ``dial``: its token and TLS)."""
    from trainer.policy.hf import HFPolicy
    from trainer.sampler.remote import RemoteSampler
    from trainer.sampler.service import sampler_service
    from trainer.sampler.serving import SamplerHost
    from trainer.sampler.settings import SamplerSettings

    host = SamplerHost(HFPolicy(policy_dir), model_name="tiny", weights_root=root, poll_s=0.05)
    running = await start_server(sampler_service(SamplerSettings(policy_dir=policy_dir), host=host), server)
    await running.wait_ready(30)
    publisher = RemoteSampler(running.address, weights_root=root, **dial)
    try:   # publish the checkpoint's weights as version 2 and wait until the service serves them
        await publisher.sync_weights(HFPolicy(policy_dir).model, 2)
    finally:
        await publisher.aclose()
    return running


@pytest.fixture
def sampler_target(tiny_model_dir: Path, tmp_path: Path) -> Iterator[str]:
    """The sampler service (``trainer.sampler.service``) over the tiny checkpoint on its own event
    loop, serving weight version 2 (published under a weights root); its address."""
    with EngineThread(name="sampler-service") as thread:
        running = thread.run(_sampler(tiny_model_dir, tmp_path / "weights", ServerSettings(host="127.0.0.1", port=0)),
                             timeout=120)
        yield running.address
        thread.run(running.stop(0), timeout=30)


@dataclass(frozen=True)
class SecureServices:
    """The ``wait`` tool server, reward and sampler services over mutual TLS, each with its own token (the
    certificates and tokens ``rlyard certs`` wrote: fixture ``pki``)."""

    tools: str
    reward: str
    sampler: str
    tokens: dict[str, str]      # address -> the token its server wants


def _env_file(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


@pytest.fixture
def secure_services(pki: Any, tiny_model_dir: Path, tmp_path: Path) -> Iterator[SecureServices]:
    """The ``wait`` tool server, the reward service (``qa_em``) and the sampler service on one event loop,
    serving mutual TLS with the tokens of ``sql-tools``, ``reward`` and ``sampler`` from ``rlyard certs``."""
    own = {name: _env_file(pki.out / "tokens" / f"{name}.env")["RLYARD_AUTH_TOKEN"]
           for name in ("sql-tools", "reward", "sampler")}
    with EngineThread(name="secure-services") as thread:
        async def up() -> list[RunningServer]:
            tools = await start_server(tool_service(ToolServerSettings(tools=("wait",), worker_threads=1)),
                                       pki.mutual(auth_token=own["sql-tools"]))
            reward = await _reward(pki.mutual(auth_token=own["reward"]))
            sampler = await _sampler(tiny_model_dir, tmp_path / "weights", pki.mutual(auth_token=own["sampler"]),
                                     auth_token=own["sampler"], tls=pki.client())
            return [tools, reward, sampler]

        servers = thread.run(up(), timeout=180)
        tools, reward, sampler = (s.address for s in servers)
        yield SecureServices(tools, reward, sampler, {tools: own["sql-tools"], reward: own["reward"],
                                                      sampler: own["sampler"]})
        for running in servers:
            thread.run(running.stop(0), timeout=30)
