"""The graph memory during an RL stage: what the run asks the memory service, and when.

Before a round's rollouts, each question's top-k meta-cognitions are retrieved (concurrently) and
put into the system message of the samples that read them (``trainer.memory``). After the step,
while the update trains, its scored trajectories are recorded with their rewards, the half-group
ablation's reward gaps update the utilities of the meta-cognitions used (one ``UpdateUtility``),
and every ``distill.every`` steps the service distills new ones.

A memory service that is down or fails costs a step its memories or its feedback, never the run:
every call is bounded (``memory.timeout_s``, at least ``DISTILL_TIMEOUT_S`` for Distill; UNAVAILABLE
is retried for ``memory.retry_window_s``), each failure is counted (``memory/failures``) and logged
at a limited rate. Trajectories whose recording failed for a reason of the service are kept (at
most ``memory.max_backlog``) and sent again at the next step: ``RecordTrajectory`` is idempotent by
trajectory id. A utility update that failed is not repeated (it may have been applied before its
deadline).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from rlyard.domain import Task, Trajectory, TrajectoryStatus
from rlyard.logs import RateLimitedLog
from rlyard.memory_client import MemoryClient
from trainer.config import MemoryConfig
from trainer.memory import (
    MemoryBlock,
    explore_order,
    group_outcomes,
    memory_block,
    memory_metrics,
    memory_samples,
    task_text,
    task_type,
    utility_updates,
    with_memory,
)
from trainer.rollout import RolloutEngine
from trainer.types import RolloutTrajectory

logger = logging.getLogger(__name__)

# a recording that failed with one of these may go through later; any other code is a refusal
_TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                        grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED})
RECORD_CONCURRENCY = 16
# Distill embeds the new meta-cognitions and their paths' questions with MiniLM: seconds on a CPU
DISTILL_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class _Record:
    """One trajectory to record: what ``RecordTrajectory`` takes."""

    trajectory: Trajectory
    reward: float
    task_type: str
    task_text: str


@dataclass
class _Counts:
    """What happened since the last step's metrics were taken."""

    failures: int = 0
    block_tokens: list[int] = field(default_factory=list)
    budget_dropped: int = 0


class StageMemory:
    """The memory of one RL stage over ``client``; see the module docstring. ``tokenizer`` is the
    policy's (it measures the token budget); ``group_size`` the stage's."""

    def __init__(self, client: MemoryClient, config: MemoryConfig, tokenizer: Any, group_size: int) -> None:
        self.client = client
        self.config = config
        self.tokenizer = tokenizer
        self.samples = memory_samples(group_size, config.ablation)
        self.backlog: deque[_Record] = deque()
        self.counts = _Counts()
        self.log = RateLimitedLog(logger)

    # ------------------------------------------------------------------ prompting
    async def rollout(self, engine: RolloutEngine, tasks: Sequence[Task], step: int) -> list[RolloutTrajectory]:
        """The engine's groups of ``tasks``, the samples that read memories prompted with them;
        each trajectory keeps the meta-cognitions it was shown (``memories``, and their ids in its
        record's ``memory_ids`` metadata)."""
        blocks = await asyncio.gather(*(self._retrieve(task) for task in tasks))
        groups = [[with_memory(task, block) if shown else task for shown in self.samples]
                  for task, block in zip(tasks, blocks, strict=True)]
        trajectories = await engine.run_groups(groups, step=step)
        for t in trajectories:
            items = blocks[t.group_id].items
            if items and self.samples[t.sample_index]:
                t.memories = items
                ids = ",".join(item.meta_cognition.id for item in items)
                t.record = dataclasses.replace(t.record, metadata={**t.record.metadata, "memory_ids": ids})
        return trajectories

    async def _retrieve(self, task: Task) -> MemoryBlock:
        cfg = self.config
        text = task_text(task)
        if not text.strip():        # nothing to match the memories by
            return MemoryBlock()
        asked = (cfg.candidates or 4 * cfg.top_k) if cfg.explore else cfg.top_k
        try:
            items = await self.client.retrieve(text, task_type(task, cfg.task_type), asked, timeout=cfg.timeout_s)
        except grpc.aio.AioRpcError as exc:
            self._failed("retrieve", exc)
            return MemoryBlock()
        if cfg.explore:
            items = explore_order(items, cfg.explore)[:cfg.top_k]
        block = memory_block(items, self.tokenizer, cfg.token_budget, cfg.header)
        self.counts.budget_dropped += block.dropped
        if block.items:
            self.counts.block_tokens.append(block.tokens)
        return block

    # ------------------------------------------------------------------ feedback
    async def feedback(self, rolled: Sequence[RolloutTrajectory], step: int, run_id: str = "") -> dict[str, float]:
        """After stage step ``step``: record its scored trajectories (and the backlog), update the
        utilities, distill when due; the step's ``memory/*`` metrics. ``run_id`` prefixes the
        recorded trajectory ids: the memory outlives runs, and recording is idempotent by id."""
        cfg = self.config
        out = memory_metrics(rolled)
        if cfg.record:
            out.update(await self._record(rolled, run_id))
        updates = utility_updates(group_outcomes(rolled)) if cfg.ablation else []
        if updates:
            try:
                updated = await self.client.update_utility(updates, cfg.learning_rate, timeout=cfg.timeout_s)
                out["memory/utility_updates"] = float(len(updated))
            except grpc.aio.AioRpcError as exc:
                self._failed("update_utility", exc)
        if cfg.distill.every and step % cfg.distill.every == 0:
            try:
                created = await self.client.distill("", cfg.distill.min_paths, cfg.distill.max_new,
                                                    timeout=max(cfg.timeout_s, DISTILL_TIMEOUT_S))
                out["memory/distilled"] = float(len(created))
            except grpc.aio.AioRpcError as exc:
                self._failed("distill", exc)
        counts, self.counts = self.counts, _Counts()
        out["memory/failures"] = float(counts.failures)
        out["memory/budget_dropped"] = float(counts.budget_dropped)
        if counts.block_tokens:
            out["memory/prompt_tokens"] = sum(counts.block_tokens) / len(counts.block_tokens)
        return out

    async def _record(self, rolled: Sequence[RolloutTrajectory], run_id: str) -> dict[str, float]:
        """Record the backlog, then the step's scored trajectories: the first alone, then the rest
        ``RECORD_CONCURRENCY`` at a time. Once a call fails for a reason of the service the rest wait
        for the next step."""
        cfg = self.config
        for t in rolled:
            if t.reward is not None and t.status != TrajectoryStatus.INFRA_FAILED:
                trajectory = t.record
                if run_id:   # another run's trajectory of the same task, step and sample is another trajectory
                    trajectory = dataclasses.replace(trajectory, trajectory_id=f"{run_id}/{trajectory.trajectory_id}",
                                                     metadata={**trajectory.metadata, "run_id": run_id})
                self.backlog.append(_Record(trajectory, t.reward, task_type(t.task, cfg.task_type),
                                            task_text(t.task)))
        pending = list(self.backlog)
        self.backlog.clear()
        limit = asyncio.Semaphore(RECORD_CONCURRENCY)
        down = asyncio.Event()
        kept: list[tuple[int, _Record]] = []
        refused = 0

        async def record(index: int, item: _Record) -> bool:
            nonlocal refused
            async with limit:
                if down.is_set():
                    kept.append((index, item))
                    return False
                try:
                    await self.client.record_trajectory(item.trajectory, item.reward, item.task_type, item.task_text,
                                                        timeout=cfg.timeout_s)
                    return True
                except grpc.aio.AioRpcError as exc:
                    self._failed("record_trajectory", exc)
                    if exc.code() in _TRANSIENT:
                        down.set()
                        kept.append((index, item))
                    else:
                        refused += 1
                    return False

        # the first goes alone: a service that is down then costs one failed call, not one per trajectory
        recorded = int(await record(0, pending[0])) if pending else 0
        recorded += sum(await asyncio.gather(*(record(i, item) for i, item in enumerate(pending[1:], 1))))
        kept.sort(key=lambda pair: pair[0])
        overflow = max(0, len(kept) - cfg.max_backlog)
        self.backlog.extend(item for _, item in kept[overflow:])        # the newest are kept, in order
        return {"memory/recorded": float(recorded), "memory/record_backlog": float(len(self.backlog)),
                "memory/records_dropped": float(refused + overflow)}

    def _failed(self, call: str, exc: grpc.aio.AioRpcError) -> None:
        self.counts.failures += 1
        self.log.warning(f"memory-{call}", "memory service at %s: %s failed: %s: %s; the run goes on without it",
                         self.client.target, call, exc.code().name, exc.details())
