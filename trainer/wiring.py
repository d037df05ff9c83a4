"""Connects RL stages to the services: the rollout engine over the tool server, scoring
through the reward service, tasks from the stage's task file.

With ``services.tools`` / ``services.reward`` empty in the config, the SQL tool server and the
reward service are started embedded, on the rollout event loop, on loopback ports of their
own; otherwise the given addresses are used. Everything async lives on one ``EngineThread``.

    with RLServices(config) as rl:
        run_experiment(config, run_dir, rollout_fn=rl.rollout, score_fn=rl.score,
                       task_source=rl.tasks, on_policy=rl.bind_policy)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from rlyard.client import ToolClient
from rlyard.errors import ConfigError
from rlyard.reward_client import RewardClient
from rlyard.server import RunningServer
from rlyard.services import ROOT
from trainer.config import ExperimentConfig, StageConfig
from trainer.policy.hf import HFPolicy
from trainer.rollout import EngineThread, RolloutEngine
from trainer.scoring import score_trajectories
from trainer.tasks import TaskSampler, load_tasks, openai_tools
from trainer.types import RolloutTrajectory, Task

logger = logging.getLogger(__name__)
DEFAULT_DB_DIR = ROOT / "data" / "spider" / "database"


class RLServices:
    """Rollouts, scores and tasks for the RL stages of one run."""

    def __init__(self, config: ExperimentConfig, *, db_dir: Path = DEFAULT_DB_DIR) -> None:
        self.config = config
        self.db_dir = db_dir
        self.thread: EngineThread | None = None
        self.servers: list[RunningServer] = []
        self.tool_client: ToolClient | None = None
        self.reward_client: RewardClient | None = None
        self.tools: list[dict[str, Any]] = []
        self.policy: HFPolicy | None = None
        self._engines: dict[int, RolloutEngine] = {}
        self._samplers: dict[int, TaskSampler] = {}
        self._stage: StageConfig | None = None
        self._step = 0
        self.last_counts: dict[str, int] = {}

    def __enter__(self) -> RLServices:
        self.thread = EngineThread()
        try:
            self.thread.run(self._start(), timeout=120)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _start(self) -> None:
        from reward_service.app import reward_service
        from reward_service.settings import RewardSettings
        from rlyard.server import start_server
        from rlyard.settings import ServerSettings
        from tool_servers.app import tool_service
        from tool_servers.settings import ToolServerSettings

        svc = self.config.services
        tools_target = svc.tools
        if not tools_target:
            server = await start_server(tool_service(ToolServerSettings(db_dir=self.db_dir)), ServerSettings())
            self.servers.append(server)
            tools_target = server.address
        reward_target = svc.reward
        if not reward_target:
            settings = RewardSettings(sql_tools_target=tools_target, tool_timeout_s=svc.timeout_s)
            server = await start_server(reward_service(settings), ServerSettings())
            self.servers.append(server)
            reward_target = server.address
        self.tool_client = ToolClient(tools_target, timeout=svc.timeout_s)
        self.reward_client = RewardClient(reward_target, timeout=max(svc.timeout_s, 120.0))
        self.tools = openai_tools(await self.tool_client.list_tools())
        logger.info("RL services: tools at %s, reward at %s", tools_target, reward_target)

    async def _stop(self) -> None:
        for engine in self._engines.values():
            await engine.aclose()
        for client in (self.tool_client, self.reward_client):
            if client is not None:
                await client.close()
        for server in reversed(self.servers):
            await server.stop(1.0)

    def close(self) -> None:
        """Stop embedded services and the event loop."""
        if self.thread is None:
            return
        try:
            self.thread.run(self._stop(), timeout=30)
        finally:
            self.thread.close()
            self.thread = None

    # --- what run_experiment calls ------------------------------------------------------
    def bind_policy(self, policy: HFPolicy) -> None:
        """Sample from the policy being trained."""
        self.policy = policy
        self._engines.clear()

    def tasks(self, stage: StageConfig, step: int) -> list[Task]:
        """The ``prompts_per_step`` tasks of stage step ``step`` (1-based), reproducibly."""
        key = id(stage)
        if key not in self._samplers:
            if not stage.tasks.path:
                raise ConfigError(f"stage {stage.name or stage.kind}: set tasks.path to a task JSONL")
            tasks = load_tasks(Path(stage.tasks.path), self.tools)
            if stage.tasks.limit:
                tasks = tasks[: stage.tasks.limit]
            self._samplers[key] = TaskSampler(tasks, self.config.seed)
        self._stage, self._step = stage, step
        n = stage.rollout.prompts_per_step
        return self._samplers[key].take((step - 1) * n, n)

    def _engine(self, stage: StageConfig) -> RolloutEngine:
        key = id(stage)
        if key not in self._engines:
            if self.policy is None or self.tool_client is None:
                raise RuntimeError("bind_policy must be called before rollouts")
            self._engines[key] = RolloutEngine(
                self.policy, self.policy.tokenizer, self.tool_client, stage.rollout,
                seed=self.config.seed, tool_timeout_s=self.config.services.timeout_s,
            )
        return self._engines[key]

    def rollout(self, tasks: list[Task], global_step: int) -> list[RolloutTrajectory]:
        """Sample ``group_size`` trajectories per task with the current stage's engine."""
        if self._stage is None or self.thread is None:
            raise RuntimeError("tasks() must be called before rollout()")
        engine = self._engine(self._stage)
        if self.policy is not None:
            self.policy.model.eval()
        try:
            return self.thread.run(engine.run(tasks, step=global_step))
        finally:
            if self.policy is not None:
                self.policy.model.train()

    def score(self, trajectories: list[RolloutTrajectory]) -> None:
        """Score through the reward service with the stage's spec."""
        if self._stage is None or self.thread is None or self.reward_client is None:
            raise RuntimeError("tasks() must be called before score()")
        self.last_counts = self.thread.run(
            score_trajectories(self.reward_client, trajectories, self._stage.reward, self._step)
        )
