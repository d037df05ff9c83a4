"""Connects RL stages to the services: the rollout engine over the tool server, scoring
through the reward service, tasks from the stage's task file.

With ``services.tools`` / ``services.reward`` empty in the config, the tool server (the SQL
tools, or ``services.tool_names`` over ``services.poi_dir``) and the reward service are started
embedded, on the rollout event loop, on loopback ports of their own; otherwise the given
addresses are used. Everything async lives on one ``EngineThread``.

    with RLServices(config) as rl:
        run_experiment(config, run_dir, rollout_fn=rl.rollout, score_fn=rl.score,
                       task_source=rl.tasks, on_policy=rl.bind_policy)
"""

from __future__ import annotations

import logging
from pathlib import Path

from rlyard.errors import ConfigError
from trainer.config import ExperimentConfig, StageConfig
from trainer.connections import DEFAULT_DB_DIR, ServiceConnections
from trainer.policy.hf import HFPolicy
from trainer.rollout import RolloutEngine
from trainer.scoring import score_trajectories
from trainer.tasks import TaskSampler, load_tasks
from trainer.types import RolloutTrajectory, Task

logger = logging.getLogger(__name__)


class RLServices(ServiceConnections):
    """Rollouts, scores and tasks for the RL stages of one run."""

    def __init__(self, config: ExperimentConfig, *, db_dir: Path = DEFAULT_DB_DIR) -> None:
        svc = config.services
        super().__init__(db_dir=db_dir, tools=svc.tools, reward=svc.reward, timeout_s=svc.timeout_s,
                         tool_names=svc.tool_names, poi_dir=svc.poi_dir, poi_index_dir=svc.poi_index_dir)
        self.config = config
        self.policy: HFPolicy | None = None
        self._engines: dict[int, RolloutEngine] = {}
        self._samplers: dict[int, TaskSampler] = {}
        self._stage: StageConfig | None = None
        self._step = 0
        self.last_counts: dict[str, int] = {}

    async def _stop(self) -> None:
        for engine in self._engines.values():
            await engine.aclose()
        await super()._stop()

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
