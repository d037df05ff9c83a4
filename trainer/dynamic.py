"""One RL step's rollouts: questions drawn, rolled out and scored in rounds (DAPO's dynamic sampling).

Without ``rollout.dynamic_sampling`` a step is one round of ``prompts_per_step`` questions. With it,
a step keeps drawing questions (``trainer.selection.select``), rolling out and scoring a group per
question, until it holds ``prompts_per_step`` groups with signal (groups the update's trajectory
filter keeps), in at most ``max_rounds`` rounds; round r draws ``ceil(oversample × missing)``
questions. Groups with signal beyond the target are left out of the batch (the last ones drawn:
DAPO's choice, which keeps the update's batch at its configured size and on-policy); a step whose
last round ends short trains on what it has and counts a cap hit. Every group rolled out, kept or
not, updates its question's pass-rate estimate.

With pipelined workers (``rollout.workers.prefetch_steps``) a step's first round is drawn and
submitted up to ``prefetch_steps`` steps earlier, before the pass rates of the steps between are
known; later rounds are drawn when the step needs them, as without.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field

from rlyard.domain import TrajectoryStatus
from trainer.compose import StageRollouts
from trainer.config import StageConfig
from trainer.selection import Draw, Drawn, TaskDraws, groups_with_signal, pass_rate_shares, record_groups, select
from trainer.types import RolloutTrajectory

logger = logging.getLogger(__name__)

__all__ = ["StepRollouts", "first_round_size", "prefetch", "roll_step"]


@dataclass
class StepRollouts:
    """What a step rolled out: ``batch`` (the update's input: everything rolled out but the
    surplus groups with signal), ``rolled`` (everything), and the step's sampling metrics."""

    batch: list[RolloutTrajectory]
    rolled: list[RolloutTrajectory]
    rollout_seconds: float = 0.0
    reward_system_errors: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


def first_round_size(stage: StageConfig) -> int:
    """How many questions a step's first round draws."""
    cfg = stage.rollout
    dynamic = cfg.dynamic_sampling
    return math.ceil(cfg.prompts_per_step * dynamic.oversample) if dynamic.enabled else cfg.prompts_per_step


def prefetch(rollouts: StageRollouts, draws: TaskDraws, first: int, last: int) -> None:
    """Pipelined workers: make sure the first rounds of global steps ``first`` … ``last`` are drawn
    (once: ``draws.ahead`` keeps them, and a checkpoint with it) and submitted by this process
    (once: a resumed process submits what its checkpoint drew again; groups a killed process had in
    flight are never read). Draws of steps before ``first`` left by a checkpoint are dropped."""
    for step in [s for s in draws.ahead if s < first]:
        del draws.ahead[step]
    stage = rollouts.stage
    n = first_round_size(stage)
    for step in range(first, last + 1):
        drawn = draws.ahead.get(step)
        if drawn is None:
            draw = select(rollouts.source, draws, n, stage.rollout.selection, seed=rollouts.stack.config.seed)
            draws.cursor = draw.cursor
            drawn = draws.ahead[step] = Drawn.of(draw, rollouts.source.tasks)
        if not rollouts.submitted_ahead(step):
            rollouts.submit_ahead(drawn.tasks(rollouts.source.tasks), step)


def roll_step(rollouts: StageRollouts, draws: TaskDraws, version: int, last: int | None = None) -> StepRollouts:
    """Draw, roll out and score the step's questions in rounds; ``draws`` (cursor, estimates, cap
    hits) moves on. ``version`` is the step's global step (the engine's seeds, the reward's step).
    With ``rollout.workers.prefetch_steps`` = k > 0 the first rounds of steps ``version`` … ``version
    + k`` (never past ``last``, the stage's last global step) are submitted first (``prefetch``), and
    this step's first round is the one drawn for it ahead."""
    stage = rollouts.stage
    cfg = stage.rollout
    dynamic = cfg.dynamic_sampling
    target = cfg.prompts_per_step
    rounds = dynamic.max_rounds if dynamic.enabled else 1
    first = next(iter(stage.reward), "")
    seed = rollouts.stack.config.seed
    ahead = rollouts.prefetch_steps
    if ahead:
        prefetch(rollouts, draws, version, version + ahead if last is None else min(version + ahead, last))
    elif draws.ahead:   # a pipelined checkpoint resumed without prefetch: its questions drawn ahead are passed over
        draws.ahead.clear()
    rolled: list[RolloutTrajectory] = []
    signal: list[int] = []
    taken: set[str] = set()
    chosen: Counter[str] = Counter()
    seconds, system_errors, done, groups = 0.0, 0, 0, 0
    for round_index in range(rounds):
        if ahead and round_index == 0:
            drawn = draws.ahead.pop(version)
            draw = Draw(drawn.tasks(rollouts.source.tasks), draws.cursor, drawn.counts)
        else:
            missing = target - len(signal)
            n = math.ceil(missing * dynamic.oversample) if dynamic.enabled else target
            draw = select(rollouts.source, draws, n, cfg.selection, seed=seed, taken=taken)
            draws.cursor = draw.cursor
        chosen.update(draw.counts)
        taken.update(t.task_id for t in draw.tasks)
        tic = time.monotonic()
        trajectories = rollouts.rollout(draw.tasks, version, round_index=round_index, first_group=groups)
        seconds += time.monotonic() - tic
        groups += len(draw.tasks)
        system_errors += rollouts.score(trajectories, version).get("reward_system_errors", 0)
        record_groups(draws, trajectories, first, cfg.selection, version)
        signal += groups_with_signal(trajectories, stage.algorithm.filters)
        rolled += trajectories
        done = round_index + 1
        if len(signal) >= target:
            break
        if all(t.status == TrajectoryStatus.INFRA_FAILED for t in trajectories):
            break          # the services are failing: more rounds would only fail too (the runner counts it)
    surplus = set(signal[target:])
    cap_hit = dynamic.enabled and len(signal) < target and done == rounds
    if cap_hit:
        draws.cap_hits += 1
        logger.info("step %d: %d of %d groups with signal after max_rounds = %d rounds; training on those",
                    version, len(signal), target, rounds)
    metrics = {
        "dynamic/rounds": float(done),
        "dynamic/questions": float(groups),
        "dynamic/groups_with_signal": float(len(signal) - len(surplus)),
        "dynamic/surplus_groups": float(len(surplus)),
        **{f"selection/{name}": float(count) for name, count in sorted(chosen.items())},
        **{f"pass_rate/{name}": share for name, share in
           pass_rate_shares(rollouts.source.tasks, draws, cfg.selection).items()},
    }
    metrics.update(rollouts.worker_metrics())
    if dynamic.enabled:
        metrics["dynamic/cap_hit"] = float(cap_hit)
        metrics["dynamic/cap_hits"] = float(draws.cap_hits)
    return StepRollouts(batch=[t for t in rolled if t.group_id not in surplus], rolled=rolled,
                        rollout_seconds=seconds, reward_system_errors=system_errors, metrics=metrics)
