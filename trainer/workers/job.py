"""One group job on a worker: roll out ``group_size`` samples of the task with the named sampler
against the tool server, score them through the reward service, return them.

A worker process keeps one ``WorkerRuntime``: one long-lived event loop in a daemon thread
(gRPC aio channels belong to a loop), one channel per tool or reward target, and the samplers
its jobs named, so that the groups a worker runs at once (Celery's thread pool) share one
sampler — their generations batch together — and the policy loads once per weight version.
A sampler that a newer spec of the same kind and path replaces is closed when its last group ends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
import time
from typing import Any

from rlyard.client import RetryPolicy
from rlyard.reward_client import RewardClient
from rlyard.routing import AnyToolClient, tool_client_for
from rlyard.tls import ClientSettings
from trainer.rollout import EngineThread, RolloutEngine
from trainer.scoring import score_trajectories
from trainer.workers import samplers
from trainer.workers.settings import WorkerSettings
from trainer.workers.wire import GroupJob, GroupResult

logger = logging.getLogger(__name__)

# UNAVAILABLE is retried over this window: a tool or reward service that restarts is waited for
RETRY_WINDOW_S = 30.0


@dataclasses.dataclass
class _Entry:
    built: samplers.BuiltSampler
    users: int = 0
    retired: bool = False


class WorkerRuntime:
    """What one worker process keeps between groups (see the module docstring). ``client``: how it
    dials the tool, reward and sampler services a job names (default: ``RLYARD_CLIENT_*``)."""

    def __init__(self, settings: WorkerSettings, client: ClientSettings | None = None) -> None:
        self.settings = settings
        self.client = ClientSettings.from_env("RLYARD_CLIENT") if client is None else client
        self.thread = EngineThread(name="rollout-worker-loop")
        self._samplers: dict[str, _Entry] = {}
        self._tools: dict[str, AnyToolClient] = {}
        self._rewards: dict[str, RewardClient] = {}
        self._building: asyncio.Lock | None = None

    def run_group(self, job: GroupJob, *, attempt: int = 1, worker: str = "") -> GroupResult:
        """Roll out (and score) ``job``'s group; blocks the calling thread until it is done."""
        return self.thread.run(self.group(job, attempt=attempt, worker=worker))

    async def group(self, job: GroupJob, *, attempt: int = 1, worker: str = "") -> GroupResult:
        """The group on this runtime's loop."""
        key = json.dumps(job.sampler, sort_keys=True)
        entry = await self._acquire(key, job.sampler)
        try:
            built = entry.built
            engine = RolloutEngine(built.sampler, built.tokenizer, self._tool_client(job), job.rollout,
                                   seed=job.seed, tool_timeout_s=job.tool_timeout_s)
            tic = time.monotonic()
            try:
                # the group's own id in the seeds (derive_seed(seed, step, group, sample, turn)), as
                # in-process: two groups of a step never share their samples' seeds
                async with asyncio.TaskGroup() as tg:
                    jobs = [tg.create_task(engine.rollout(job.task, job.group_id, s, step=job.step))
                            for s in range(job.group_size)]
                trajectories = [j.result() for j in jobs]
            finally:
                await engine.aclose()
            rolled = time.monotonic() - tic
        finally:
            await self._release(key, entry)
        for t in trajectories:
            t.record = dataclasses.replace(t.record, metadata={**t.record.metadata, "group_key": job.key})
        counts: dict[str, int] = {}
        tic = time.monotonic()
        if job.reward:
            counts = await score_trajectories(self._reward_client(job), trajectories, job.reward_spec, job.step)
        return GroupResult(key=job.key, trajectories=trajectories, attempt=attempt, worker=worker,
                           rollout_seconds=rolled, score_seconds=time.monotonic() - tic, counts=counts)

    async def _acquire(self, key: str, spec: dict[str, Any]) -> _Entry:
        # one build at a time: groups that name the same sampler wait for one build, and loading
        # two checkpoints at once in threads races inside transformers
        if self._building is None:
            self._building = asyncio.Lock()
        async with self._building:
            return await self._acquire_locked(key, spec)

    async def _acquire_locked(self, key: str, spec: dict[str, Any]) -> _Entry:
        entry = self._samplers.get(key)
        if entry is None:
            entry = _Entry(await samplers.build(spec, self.settings, self.client))
            family = _family(spec)
            for other_key, other in list(self._samplers.items()):
                if _family(json.loads(other_key)) == family and not other.retired:
                    other.retired = True   # a newer version of the same weights replaces it
                    if other.users == 0:
                        await self._close(other_key, other)
            self._samplers[key] = entry
            logger.info("sampler %s ready", key)
        entry.users += 1
        return entry

    async def _release(self, key: str, entry: _Entry) -> None:
        entry.users -= 1
        if entry.retired and entry.users == 0:
            await self._close(key, entry)

    async def _close(self, key: str, entry: _Entry) -> None:
        self._samplers.pop(key, None)
        await entry.built.sampler.aclose()

    def _tool_client(self, job: GroupJob) -> AnyToolClient:
        if job.tools not in self._tools:   # several replicas (a,b or routed:///): sessions routed by id
            self._tools[job.tools] = tool_client_for(job.tools, timeout=job.tool_timeout_s,
                                                retry=RetryPolicy.within(RETRY_WINDOW_S),
                                                auth_token=self.client.token_for(job.tools),
                                                tls=self.client.channel_tls())
        return self._tools[job.tools]

    def _reward_client(self, job: GroupJob) -> RewardClient:
        if job.reward not in self._rewards:
            self._rewards[job.reward] = RewardClient(job.reward, timeout=job.reward_timeout_s,
                                                     retry=RetryPolicy.within(RETRY_WINDOW_S),
                                                     auth_token=self.client.token_for(job.reward),
                                                     tls=self.client.channel_tls())
        return self._rewards[job.reward]

    def close(self) -> None:
        """Close the samplers, the channels and the loop."""
        async def stop() -> None:
            for key, entry in list(self._samplers.items()):
                await self._close(key, entry)
            for client in [*self._tools.values(), *self._rewards.values()]:
                await client.close()

        try:
            self.thread.run(stop(), timeout=60)
        finally:
            self.thread.close()


def _family(spec: dict[str, Any]) -> tuple[str, str]:
    """Specs that differ only in their version name the same weights."""
    return str(spec.get("kind")), json.dumps({k: v for k, v in spec.items() if k != "version"}, sort_keys=True)


_RUNTIME: WorkerRuntime | None = None
_RUNTIME_LOCK = threading.Lock()


def runtime() -> WorkerRuntime:
    """This process's runtime, made on first use (settings from ``RLYARD_WORKERS_*`` unless
    ``configure`` gave them)."""
    global _RUNTIME
    with _RUNTIME_LOCK:
        if _RUNTIME is None:
            _RUNTIME = WorkerRuntime(WorkerSettings.from_env("RLYARD_WORKERS"))
        return _RUNTIME


def configure(settings: WorkerSettings) -> None:
    """Make this process's runtime with ``settings`` (``rlyard worker`` does, before it consumes)."""
    global _RUNTIME
    with _RUNTIME_LOCK:
        if _RUNTIME is not None:
            raise RuntimeError("the worker runtime is already running; configure it before the first group")
        _RUNTIME = WorkerRuntime(settings)


def shutdown() -> None:
    """Close this process's runtime, if one was made (the worker is stopping)."""
    global _RUNTIME
    with _RUNTIME_LOCK:
        if _RUNTIME is not None:
            _RUNTIME.close()
            _RUNTIME = None
