"""The composition root: the one place that builds, from an experiment config, what RL stages
and evaluations need — the services (embedded or remote) and their clients on one event loop,
the sampler of a policy (``model.backend``), each RL stage's tasks, rollouts and scores.
``rlyard train``, the trainer service, ``rlyard eval`` and the demos all go through it.

    with open_stack(config) as stack:
        run_experiment(config, run_dir, stack=stack)                 # RL stages use stack.stage(...)
        report = evaluate(checkpoint, stack.tasks(path), stack, ...)
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import logging
import uuid
from collections.abc import Coroutine, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from rlyard.client import RetryPolicy
from rlyard.domain import Task, TrajectoryStatus
from rlyard.errors import ConfigError
from rlyard.memory_client import MemoryClient
from rlyard.reward_client import RewardClient
from rlyard.routing import AnyToolClient, tool_client_for
from rlyard.tls import ClientSettings
from trainer import embedded
from trainer.config import ExperimentConfig, RolloutConfig, StageConfig
from trainer.memory_stage import StageMemory
from trainer.rollout import EngineThread, RolloutEngine
from trainer.sampler import Sampler, build_sampler, derive_seed
from trainer.scoring import score_trajectories
from trainer.tasks import TaskSampler, load_tasks, openai_tools
from trainer.types import RolloutTrajectory

if TYPE_CHECKING:   # Celery loads only for a stage with rollout.workers
    from trainer.workers.source import WorkerRollouts

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Long enough for a reward that runs gold queries or a judge over a whole batch.
REWARD_TIMEOUT_S = 120.0


def check(config: ExperimentConfig) -> None:
    """What a run of ``config`` would refuse, checked before anything starts: the embedded
    services' settings and the RL stages' task files (the sampler backend is checked when the
    config loads)."""
    embedded.check(config.services, config.memory)
    for stage in config.stages:
        if stage.kind == "rl" and not Path(stage.tasks.path).is_file():
            raise ConfigError(f"stage {stage.name or stage.kind}: task file {stage.tasks.path} does not exist "
                              "(an environment's prepare writes it)")


class Stack:
    """The services of a run and their clients, on one event loop in a daemon thread."""

    def __init__(self, config: ExperimentConfig, thread: EngineThread, services: embedded.Services,
                 tool_client: AnyToolClient, reward_client: RewardClient, tools: list[dict[str, Any]],
                 memory_client: MemoryClient | None = None, dial: ClientSettings | None = None) -> None:
        self.config = config
        self.dial = dial or ClientSettings()    # TLS and tokens of the services given by address
        self.thread = thread
        self.services = services
        self.tool_client = tool_client
        self.reward_client = reward_client
        self.memory_client = memory_client      # None: the config's memory is off
        self.tools = tools                      # ListTools as OpenAI function schemas
        self._samplers: list[Sampler] = []

    @property
    def timeout_s(self) -> float:
        """The deadline of one tool call."""
        return self.config.services.timeout_s

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the stack's event loop and wait for it."""
        return self.thread.run(coro, timeout)

    def sampler(self, policy: Any, *, max_batch_size: int | None = None, in_process: bool = False) -> Sampler:
        """The sampler of ``policy`` (an ``HFPolicy``) of the config's backend (``in_process``: the
        local one whatever the backend, e.g. to evaluate a checkpoint file); closed with the stack."""
        backend = "hf" if in_process else self.config.model.backend
        options: dict[str, Any] = {}
        if backend == "remote":
            target = self.config.model.sampler      # always given by address: TLS and its token
            options = {"target": target, "weights_root": self.config.model.weights_dir,
                       "retry_window_s": self.config.services.retry_window_s,
                       **_security(self.dial, target, given=True)}
        elif max_batch_size is not None:
            options = {"max_batch_size": max_batch_size}
        sampler: Sampler = build_sampler(backend, policy, **options)
        self._samplers.append(sampler)
        return sampler

    def tasks(self, path: Path | str, limit: int = 0) -> list[Task]:
        """The tasks of a task JSONL, with this tool server's tool schemas."""
        tasks = load_tasks(Path(path), self.tools)
        return tasks[:limit] if limit else tasks

    def engine(self, rollout: RolloutConfig, sampler: Sampler, tokenizer: Any, *, seed: int) -> RolloutEngine:
        """A rollout engine over this stack's tool server."""
        return RolloutEngine(sampler, tokenizer, self.tool_client, rollout, seed=seed, tool_timeout_s=self.timeout_s)

    def stage(self, stage: StageConfig, sampler: Sampler, tokenizer: Any) -> StageRollouts:
        """What an RL stage does against the services."""
        if stage.kind != "rl":
            raise ValueError(f"stage {stage.name or stage.kind} is not an RL stage")
        return StageRollouts(self, stage, sampler, tokenizer)

    def close(self) -> None:
        """Close the samplers, the clients and embedded services, and the event loop."""
        async def stop() -> None:
            for sampler in self._samplers:
                await sampler.aclose()
            for client in (self.tool_client, self.reward_client, self.memory_client):
                if client is not None:
                    await client.close()

        try:
            self.thread.run(stop(), timeout=60)
        finally:
            self._samplers.clear()


class StageRollouts:
    """One RL stage against the services: its tasks (reproducible from the step), its rollouts
    (prompted with the graph memory when the config turns it on), its scores, the memory's
    feedback, and the sampler's weights after each update."""

    def __init__(self, stack: Stack, stage: StageConfig, sampler: Sampler, tokenizer: Any) -> None:
        self.stack = stack
        self.stage = stage
        self.sampler = sampler
        self.source = TaskSampler(stack.tasks(stage.tasks.path, stage.tasks.limit), stack.config.seed)
        self.engine = stack.engine(stage.rollout, sampler, tokenizer, seed=stack.config.seed)
        self.memory = None if stack.memory_client is None else StageMemory(
            stack.memory_client, stack.config.memory, tokenizer, stage.rollout.group_size)
        self.last_counts: dict[str, int] = {}
        self.workers = _worker_rollouts(stage) if stage.rollout.workers.enabled else None
        self._jobs_prefix = uuid.uuid4().hex[:12]   # group keys stay unique on a broker that runs share
        self._ahead: dict[int, tuple[list[str], list[str]]] = {}   # global step -> its first round's keys, task ids
        self._behind: list[int] = []      # versions behind of the groups taken since the last worker_metrics
        self._dropped = 0                 # groups dropped as too stale since then

    @property
    def prefetch_steps(self) -> int:
        """How many steps ahead the workers' groups are submitted (0: each step submits its own)."""
        return self.stage.rollout.workers.prefetch_steps if self.workers is not None else 0

    def submitted_ahead(self, global_step: int) -> bool:
        """Whether this process submitted step ``global_step``'s first round ahead of the step."""
        return global_step in self._ahead

    def submit_ahead(self, tasks: list[Task], global_step: int) -> None:
        """Submit step ``global_step``'s first round (``tasks``) to the workers now, with the weights
        the sampler holds now; ``rollout(..., round_index=0)`` of that step takes them."""
        if global_step in self._ahead:
            raise ValueError(f"step {global_step}'s groups were submitted already")
        keys = self._submit(tasks, global_step, self.stack.config.seed, 0)
        self._ahead[global_step] = (keys, [t.task_id for t in tasks])

    def tasks(self, step: int) -> list[Task]:
        """The ``prompts_per_step`` tasks of stage step ``step`` (1-based)."""
        n = self.stage.rollout.prompts_per_step
        return self.source.take((step - 1) * n, n)

    def rollout(self, tasks: list[Task], global_step: int, *, round_index: int = 0,
                first_group: int = 0) -> list[RolloutTrajectory]:
        """``group_size`` trajectories per task, group ids from ``first_group`` on. A step's later
        rounds (``round_index`` > 0, dynamic sampling) sample with seeds of their own: the engine's
        seeds depend on the group's index within the call, which starts at 0 again each round."""
        seed = self.stack.config.seed
        self.engine.seed = seed if round_index == 0 else derive_seed(seed, round_index)
        if self.workers is not None:
            trajectories = self._on_workers(tasks, global_step, self.engine.seed, round_index)
        elif self.memory is not None:
            trajectories = self.stack.run(self.memory.rollout(self.engine, tasks, global_step))
        else:
            trajectories = self.stack.run(self.engine.run(tasks, step=global_step))
        if first_group:
            for t in trajectories:
                t.group_id += first_group
                t.record = dataclasses.replace(t.record, metadata={**t.record.metadata, "group_id": str(t.group_id)})
        return trajectories

    def _on_workers(self, tasks: list[Task], global_step: int, seed: int, round_index: int) -> list[RolloutTrajectory]:
        """The tasks' groups as group jobs on the Celery workers, which sample through the sampler
        service; group ids (and seeds) as in-process. A step's first round submitted ahead
        (``submit_ahead``) is taken as it is. Groups that failed, timed out or came back too stale at
        this version are left out (``workers/*`` metrics count them)."""
        assert self.workers is not None
        ahead = self._ahead.pop(global_step, None) if round_index == 0 else None
        if ahead is not None:
            keys, task_ids = ahead
            if task_ids != [t.task_id for t in tasks]:
                raise RuntimeError(f"step {global_step}: the questions submitted ahead {task_ids} are not the step's "
                                   f"{[t.task_id for t in tasks]}")
        else:
            keys = self._submit(tasks, global_step, seed, round_index)
        groups = self.workers.take(keys, self.sampler.weight_version)
        for g in groups:
            if g.outcome == "ok":
                self._behind.append(g.versions_behind)
            elif g.outcome == "stale":
                self._dropped += 1
        return [t for g in groups for t in g.trajectories]

    def _submit(self, tasks: list[Task], global_step: int, seed: int, round_index: int) -> list[str]:
        """Submit one group job per task (group ``i`` for the ``i``-th); their keys."""
        from trainer.workers.wire import GroupJob

        assert self.workers is not None
        model = self.stack.config.model
        sampler = {"kind": "remote", "target": model.sampler, "tokenizer": model.path}
        version = self.sampler.weight_version
        keys = [f"{self._jobs_prefix}/step{global_step}/r{round_index}/g{i}" for i in range(len(tasks))]
        for i, (key, task) in enumerate(zip(keys, tasks, strict=True)):
            self.workers.submit(GroupJob(
                key=key, task=task, group_size=self.stage.rollout.group_size, rollout=self.stage.rollout,
                sampler=sampler, tools=self.stack.services.tools, weight_version=version, step=global_step,
                group_id=i, seed=seed, tool_timeout_s=self.stack.timeout_s))
        return keys

    def worker_metrics(self) -> dict[str, float]:
        """The workers' counts so far (``workers/*``; ``workers/pending``: groups in flight, i.e.
        submitted and not taken yet) and, over the groups taken since the last call,
        ``workers/staleness_mean`` and ``_max`` (kept groups, in weight versions; absent when none)
        and ``workers/stale_dropped``. Empty without workers."""
        if self.workers is None:
            return {}
        out = self.workers.metrics()
        if self._behind:
            out["workers/staleness_mean"] = sum(self._behind) / len(self._behind)
            out["workers/staleness_max"] = float(max(self._behind))
        out["workers/stale_dropped"] = float(self._dropped)
        self._behind, self._dropped = [], 0
        return out

    def score(self, trajectories: list[RolloutTrajectory], global_step: int) -> dict[str, int]:
        """Fill their rewards through the reward service (a system failure marks one INFRA_FAILED)."""
        self.last_counts = self.stack.run(
            score_trajectories(self.stack.reward_client, trajectories, self.stage.reward, global_step)
        )
        return self.last_counts

    def memory_feedback(self, rolled: list[RolloutTrajectory], step: int,
                        run_id: str = "") -> concurrent.futures.Future[dict[str, float]] | None:
        """Start the memory's feedback on stage step ``step``'s trajectories (recording under
        ``run_id``, utility update, distillation) on the stack's loop, to overlap the update; its
        future gives the step's ``memory/*`` metrics. None when the memory is off."""
        if self.memory is None:
            return None
        return self.stack.thread.submit(self.memory.feedback(rolled, step, run_id))

    def sync_weights(self, model: torch.nn.Module, version: int) -> None:
        """The sampler samples with ``model``'s weights as ``version`` from now on."""
        self.stack.run(self.sampler.sync_weights(model, version))

    def describe_failures(self, trajectories: list[RolloutTrajectory]) -> str:
        """Which service failed the INFRA_FAILED trajectories, and how: per service its most
        frequent error and how many trajectories it failed."""
        failed = [t.infra_error or "(no error given)" for t in trajectories
                  if t.status == TrajectoryStatus.INFRA_FAILED]
        reward = [e for e in failed if e.startswith("reward service")]
        sampler = [e for e in failed if e.startswith("sampler:")]
        tools = [e for e in failed if not e.startswith(("reward service", "sampler:"))]
        parts = []
        if sampler:
            where = getattr(self.sampler, "target", "")
            parts.append(f"sampler{f' at {where}' if where else ''}: {_most_common(sampler)} "
                         f"({len(sampler)} of {len(trajectories)} trajectories)")
        if tools:
            parts.append(f"tool server at {self.stack.tool_client.target}: {_most_common(tools)} "
                         f"({len(tools)} of {len(trajectories)} trajectories)")
        if reward:
            parts.append(f"{_most_common(reward)} ({len(reward)} of {len(trajectories)} trajectories)")
        return "; ".join(parts) or "no trajectory failed"

    def close(self) -> None:
        """Close the engine's tool stream (and the workers' connections)."""
        if self.workers is not None:
            self.workers.close()
        self.stack.run(self.engine.aclose())


def _worker_rollouts(stage: StageConfig) -> WorkerRollouts:
    """The trainer's side of the Celery workers for ``stage`` (imported here: Celery only when used)."""
    from trainer.workers.settings import WorkerSettings
    from trainer.workers.source import WorkerRollouts

    cfg = stage.rollout.workers
    # the workers' own settings (RLYARD_WORKERS_*: with tls on the token file gives the secured
    # Redis's URL, password included), so trainer and workers agree on broker, queue and backend;
    # a run config's broker_url wins
    settings = WorkerSettings.from_env("RLYARD_WORKERS")
    if cfg.broker_url:
        settings = settings.replaced({"broker_url": cfg.broker_url}, "rollout.workers.broker_url")
    return WorkerRollouts(settings, max_staleness=cfg.max_staleness,
                          group_timeout_s=cfg.group_timeout_s)


def _most_common(errors: list[str]) -> str:
    return collections.Counter(errors).most_common(1)[0][0]


def _security(client: ClientSettings, target: str, *, given: bool) -> dict[str, Any]:
    """The ``auth_token`` and ``tls`` of a client of ``target``: from ``client`` for a service given
    by address, none for one started here (plaintext on loopback, no token)."""
    if not given:
        return {"auth_token": None, "tls": None}
    return {"auth_token": client.token_for(target), "tls": client.channel_tls()}


@contextlib.contextmanager
def open_stack(config: ExperimentConfig, *, loop_name: str = "rollout-loop",
               extra_specs: Sequence[Any] = ()) -> Iterator[Stack]:
    """The services of ``config`` (started embedded where it names no address) and their clients;
    everything is stopped on exit. An embedded reward service may call the tool servers and judges
    that the RL stages' reward specs and ``extra_specs`` (an evaluation's judge) name.

    Raises:
        ConfigError: an embedded service's settings are wrong.
        TimeoutError, rlyard.server.WarmUpError: an embedded tool server did not become ready.
    """
    embedded.check(config.services, config.memory)
    dial = ClientSettings.from_env("RLYARD_CLIENT")   # TLS and tokens of the services given by address
    thread = EngineThread(name=loop_name)
    exits = contextlib.AsyncExitStack()
    stack: Stack | None = None

    async def start() -> Stack:
        specs = [stage.reward for stage in config.stages if stage.kind == "rl"] + list(extra_specs)
        services = await exits.enter_async_context(embedded.embedded_services(config.services, specs,
                                                                              config.memory, dial))
        timeout = config.services.timeout_s
        # UNAVAILABLE is retried over the window: a service that restarts is waited for
        retry = RetryPolicy.within(config.services.retry_window_s)
        # several replicas ('a:1,b:2' or routed:///name:port): sessions routed by id (rlyard.routing)
        tool_client = tool_client_for(services.tools, timeout=timeout, retry=retry,
                                      **_security(dial, services.tools, given=services.tool_settings is None))
        reward_client = RewardClient(services.reward, timeout=max(timeout, REWARD_TIMEOUT_S), retry=retry,
                                     **_security(dial, services.reward, given=services.reward_settings is None))
        memory = config.memory
        # short bounds: a memory service that is down costs a step its memories, never waits out the run
        memory_client = MemoryClient(services.memory, timeout=memory.timeout_s,
                                     retry=RetryPolicy.within(memory.retry_window_s),
                                     **_security(dial, services.memory, given=services.memory_settings is None),
                                     ) if services.memory else None
        try:
            tools = openai_tools(await tool_client.list_tools())
        except BaseException:
            for client in (tool_client, reward_client, memory_client):
                if client is not None:
                    await client.close()
            raise
        logger.info("services: tools at %s (%s), reward at %s%s", services.tools,
                    ", ".join(t["function"]["name"] for t in tools), services.reward,
                    f", memory at {services.memory}" if services.memory else "")
        return Stack(config, thread, services, tool_client, reward_client, tools, memory_client, dial)

    try:
        stack = thread.run(start(), timeout=config.services.embedded.ready_timeout_s + 120)
        yield stack
    finally:
        try:
            if stack is not None:
                stack.close()
            thread.run(exits.aclose(), timeout=60)
        finally:
            thread.close()
