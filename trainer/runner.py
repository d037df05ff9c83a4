"""Run an experiment: its stages in order, with checkpoints, resume, events and run outputs.

Steps are counted per stage (``step`` 1..stage.steps) and across the run (``global_step``);
checkpoints are named by the global step and hold the ``RunState``, the optimizer and scheduler
of the current stage and every RNG state. A checkpoint is written every
``checkpoint.every_steps`` global steps, at the end of each stage, and when a stop is asked for
(``StopRequest``, unless it says not to) or SIGTERM/SIGINT arrives; the run then returns STOPPED.
With ``resume=True`` a run continues from the newest checkpoint in ``run_dir/checkpoints``; the
result equals an uninterrupted run (same seed, same hardware).

RL stages work through the composition root's ``Stack`` (``trainer.compose``): its sampler of
the trained policy, and per stage its tasks, rollouts, scores and (with ``memory.enabled``) the
graph memory's feedback, which overlaps the update. With ``kl_coef > 0`` the
reference is the policy as it was when the RL stage began, kept in
``checkpoints/reference-<stage>.pt``. An RL step whose every trajectory failed for a reason of the
services (INFRA_FAILED) learns nothing and the run goes on; ``services.max_failed_steps`` such
steps in a row fail the run (``ServicesFailed``, naming the service).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rlyard.domain import TrajectoryStatus
from rlyard.errors import ConfigError
from trainer.checkpoint import (
    Checkpoint,
    StopRequested,
    latest_checkpoint,
    restore_checkpoint,
    save_checkpoint,
    seed_everything,
)
from trainer.compose import Stack, StageRollouts
from trainer.config import ExperimentConfig, StageConfig
from trainer.dynamic import roll_step
from trainer.events import CheckpointEvent, EventFn, MetricsEvent, RunState, StateEvent, StopRequest
from trainer.grpo import frozen_reference, grpo_update
from trainer.outputs import MetricsLog, plot_curves, write_report, write_samples
from trainer.policy import HFPolicy, VLMPolicy, load_policy
from trainer.sampler import Sampler
from trainer.selection import TaskDraws
from trainer.sft import SftData, load_sft_examples, sft_step
from trainer.types import RolloutTrajectory

logger = logging.getLogger(__name__)

__all__ = ["ServicesFailed", "StageLimit", "export_policy", "run_experiment", "writes_samples"]

# ``stage_limit(name, configured_seconds)``: asked when a stage starts; a number replaces its time limit.
StageLimit = Callable[[str, float], float | None]


class ServicesFailed(RuntimeError):
    """``services.max_failed_steps`` RL steps in a row had every trajectory fail (INFRA_FAILED)."""

SAMPLES_PER_STEP = 2


def _stage_name(stage: StageConfig, index: int) -> str:
    return stage.name or f"{stage.kind}{index}"


def _build_optimizer(policy: HFPolicy, stage: StageConfig) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW and a linear warmup to ``optim.lr`` over ``warmup_steps``, constant after."""
    opt = stage.optim
    optimizer = torch.optim.AdamW(
        [p for p in policy.model.parameters() if p.requires_grad],
        lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay,
    )
    warmup = opt.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0
    )
    return optimizer, scheduler


class _Run:
    """The mutable state of one ``run_experiment`` call."""

    def __init__(self, config: ExperimentConfig, run_dir: Path, on_event: EventFn | None,
                 stage_limit: StageLimit | None) -> None:
        self.config = config
        self.run_dir = run_dir
        self.ckpt_dir = run_dir / "checkpoints"
        self.on_event = on_event
        self.stage_limit = stage_limit
        self.metrics = MetricsLog(run_dir)
        self.state = RunState()
        self.started = time.monotonic()
        self.last_saved = -1
        self.failed_steps = 0      # RL steps in a row whose every trajectory failed

    def emit(self, event: Any) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def wall(self) -> float:
        return self.state.wall_seconds + time.monotonic() - self.started

    def save(self, policy: HFPolicy, optimizer: Any, scheduler: Any) -> Checkpoint | None:
        step = self.state.global_step
        if step == self.last_saved:
            return None
        ckpt = save_checkpoint(self.ckpt_dir, step, model=policy.model, optimizer=optimizer, scheduler=scheduler,
                               trainer_state=self.state.to_json(self.wall()), keep=self.config.checkpoint.keep)
        self.last_saved = step
        self.emit(CheckpointEvent(step, self.state.stage_index, str(ckpt.path)))
        return ckpt

    def report(self, state: str, error: str = "") -> dict[str, Any]:
        stages = []
        s = self.state
        for i, stage in enumerate(self.config.stages):
            steps_done = s.stage_steps.get(i, stage.steps) if i < s.stage_index else (
                s.stage_step if i == s.stage_index else 0)
            name = _stage_name(stage, i)
            stages.append({"name": name, "kind": stage.kind, "steps": stage.steps, "steps_done": steps_done,
                           "seconds": round(s.stage_secs.get(i, 0.0), 3),
                           "final_metrics": s.final_metrics.get(name, {})})
        last = next((st["final_metrics"] for st in reversed(stages) if st["final_metrics"]), {})
        report: dict[str, Any] = {
            "run_id": self.run_dir.name, "name": self.config.name, "state": state, "seed": self.config.seed,
            "config": dataclasses.asdict(self.config), "stages": stages,
            "steps": s.global_step, "final_metrics": last,
            "wall_seconds": round(self.wall(), 3), "run_dir": str(self.run_dir),
            "last_checkpoint": self.last_saved if self.last_saved >= 0 else None,
            "models": {name: str(self.run_dir / "models" / name)
                       for name in (_stage_name(st, i) for i, st in enumerate(self.config.stages))
                       if (self.run_dir / "models" / name).is_dir()},
        }
        if error:
            report["error"] = error
        return report

    def finish_outputs(self, report: dict[str, Any]) -> dict[str, Any]:
        records = self.metrics.read()
        report["curves"] = [str(p) for p in plot_curves(self.run_dir, records)] if records else []
        write_report(self.run_dir, report)
        return report


def run_experiment(
    config: ExperimentConfig,
    run_dir: Path,
    *,
    stack: Stack | None = None,
    on_event: EventFn | None = None,
    stop: StopRequest | None = None,
    resume: bool = True,
    stage_limit: StageLimit | None = None,
) -> dict[str, Any]:
    """Train ``config``'s stages in order, writing checkpoints and outputs under ``run_dir``.

    ``stack`` (from ``trainer.compose.open_stack``) serves the RL stages: the sampler of the
    trained policy, tasks, rollouts and scores. ``stage_limit(name, max_seconds)`` is asked once
    when a stage starts (not when it resumes): a number replaces the stage's time limit for this
    run, and a resumed run keeps it (the learning demo gives GRPO what is left of its budget).

    Returns the report (also written to ``run_dir/report.json``); ``report["state"]`` is SUCCEEDED
    or STOPPED. ``on_event`` receives ``StateEvent``, ``MetricsEvent`` and ``CheckpointEvent``.

    Raises:
        ConfigError: an RL stage without a ``stack``, or bad SFT data.
        Exception: whatever a step raised, after the FAILED event and report were written.
    """
    run_dir = Path(run_dir)
    rl_stages = [_stage_name(s, i) for i, s in enumerate(config.stages) if s.kind == "rl"]
    if rl_stages and stack is None:
        raise ConfigError(f"rl stage(s) {', '.join(rl_stages)} need the services: open them with "
                          "trainer.compose.open_stack(config) and pass stack=")
    run_dir.mkdir(parents=True, exist_ok=True)
    run = _Run(config, run_dir, on_event, stage_limit)
    stop_request = stop or StopRequest()
    try:
        with StopRequested() as signals:
            state = _train(run, stack, stop_request, signals, resume)
    except Exception as exc:
        logger.exception("run %s failed", run_dir.name)
        report = run.finish_outputs(run.report("FAILED", f"{type(exc).__name__}: {exc}"))
        run.emit(StateEvent(run_dir.name, "FAILED", run.state.global_step, error=report["error"]))
        raise
    report = run.finish_outputs(run.report(state))
    run.emit(StateEvent(run_dir.name, state, report["steps"], report=str(run_dir / "report.json")))
    return report


def _restore(run: _Run, resume: bool) -> Checkpoint | None:
    """The checkpoint to resume from (its state loaded into ``run``), or None for a fresh start."""
    ckpt = latest_checkpoint(run.ckpt_dir) if resume else None
    if ckpt is None:  # a fresh start: outputs of an earlier attempt in this directory would mix in
        for stale in (run.metrics.path, run.run_dir / "samples.md"):
            stale.unlink(missing_ok=True)
        return None
    run.state = RunState.from_json(ckpt.trainer_state, lambda i: run.config.stages[i].max_seconds)
    run.metrics.truncate_after(run.state.global_step)
    run.last_saved = run.state.global_step
    logger.info("run %s resumes from %s", run.run_dir.name, ckpt.path)
    return ckpt


def _train(run: _Run, stack: Stack | None, stop: StopRequest, signals: StopRequested, resume: bool) -> str:
    """The stage loop; returns SUCCEEDED or STOPPED."""
    config = run.config
    seed_everything(config.seed)
    dtype = torch.bfloat16 if config.model.dtype == "bfloat16" else torch.float32
    policy = load_policy(config.model.path, dtype=dtype)   # a VLMPolicy for a vision checkpoint
    policy.model.train()
    ckpt = _restore(run, resume)
    run.emit(StateEvent(run.run_dir.name, "RUNNING", run.state.global_step,
                        resumed_from=None if ckpt is None else run.state.global_step))
    sampler = stack.sampler(policy) if stack is not None and any(s.kind == "rl" for s in config.stages) else None

    def stopping() -> bool:
        return stop.is_set() or signals.requested

    def saving_stop() -> bool:
        return signals.requested or stop.checkpoint

    for index, stage in enumerate(config.stages):
        if index < run.state.stage_index:
            continue
        resuming = ckpt if index == run.state.stage_index else None
        ckpt = None
        if _run_stage(run, policy, stage, index, resuming, stack, sampler, stopping, saving_stop) == "STOPPED":
            return "STOPPED"
    return "SUCCEEDED"


def _enter_stage(run: _Run, stage: StageConfig, index: int, name: str, ckpt: Checkpoint | None,
                 policy: HFPolicy, optimizer: Any, scheduler: Any) -> int:
    """Restore the stage from ``ckpt``, or start it (asking ``stage_limit`` for its time limit);
    returns the steps already done."""
    if ckpt is not None:
        restore_checkpoint(ckpt, model=policy.model, optimizer=optimizer, scheduler=scheduler)
        return run.state.stage_step
    limit = None if run.stage_limit is None else run.stage_limit(name, stage.max_seconds)
    if limit is not None and limit < 0:
        raise ValueError(f"stage {name}: stage_limit gave {limit} s; a time limit is >= 0 (0 = none)")
    s = run.state
    s.stage_index, s.stage_step, s.cursor, s.stage_seconds, s.stage_done = index, 0, 0, 0.0, False
    s.draws = None
    s.stage_limit = stage.max_seconds if limit is None else float(limit)
    if limit is not None and limit != stage.max_seconds:
        logger.info("stage %s: time limit %.0f s (configured: %.0f s)", name, limit, stage.max_seconds)
    return 0


def _run_stage(run: _Run, policy: HFPolicy, stage: StageConfig, index: int, ckpt: Checkpoint | None,
               stack: Stack | None, sampler: Sampler | None, stopping: Callable[[], bool],
               saving_stop: Callable[[], bool]) -> str | None:
    """One stage from its first (or resumed) step to its end; STOPPED when a stop came."""
    name = _stage_name(stage, index)
    optimizer, scheduler = _build_optimizer(policy, stage)
    start = _enter_stage(run, stage, index, name, ckpt, policy, optimizer, scheduler)
    steps: _SftSteps | _RlSteps
    if stage.kind == "sft":
        steps = _SftSteps(run, policy, stage, index)
    else:
        assert stack is not None and sampler is not None
        steps = _RlSteps(run, policy, stage, index, start, stack.stage(stage, sampler, policy.tokenizer))
    try:
        for step in range(start + 1, stage.steps + 1):
            if run.state.stage_done:
                break
            if stopping():
                if saving_stop():
                    run.save(policy, optimizer, scheduler)
                return "STOPPED"
            tic = time.monotonic()
            values, picks = steps.step(step, optimizer, scheduler)
            _after_step(run, policy, stage, index, name, step, time.monotonic() - tic, values, picks,
                        optimizer, scheduler)
    finally:
        steps.close()
    if run.state.stage_done:
        run.state.stage_steps[index] = run.state.stage_step
        run.state.stage_secs[index] = run.state.stage_seconds
        export_policy(policy, run.run_dir / "models" / name)
    if stopping() and index + 1 < len(run.config.stages):
        if saving_stop():
            run.save(policy, optimizer, scheduler)
        return "STOPPED"
    return None


def _after_step(run: _Run, policy: HFPolicy, stage: StageConfig, index: int, name: str, step: int,
                seconds: float, values: dict[str, float], picks: list[RolloutTrajectory], optimizer: Any,
                scheduler: Any) -> None:
    """Account for a finished step: state, time limit, samples, metrics, event, checkpoint."""
    s = run.state
    values["step_seconds"] = seconds
    values["tokens_per_s"] = values.get("tokens", 0.0) / max(seconds, 1e-9)
    s.stage_step = step
    s.global_step += 1
    s.stage_seconds += seconds
    out_of_time = bool(s.stage_limit) and s.stage_seconds >= s.stage_limit
    s.stage_done = step == stage.steps or out_of_time
    if picks and writes_samples(step, s.stage_done, run.config.checkpoint.every_steps):
        write_samples(run.run_dir, name, step, picks, policy.tokenizer)
    s.final_metrics[name] = values
    run.metrics.append({"stage": name, "stage_index": index, "step": step, "global_step": s.global_step,
                        "wall_seconds": round(run.wall(), 3), **values})
    run.emit(MetricsEvent(name, step, s.global_step, values))
    if out_of_time and step < stage.steps:
        logger.info("stage %s: time limit of %.0f s reached after %d of %d steps", name, s.stage_limit,
                    step, stage.steps)
    if s.global_step % run.config.checkpoint.every_steps == 0 or s.stage_done:
        run.save(policy, optimizer, scheduler)


def writes_samples(step: int, stage_done: bool, every_steps: int) -> bool:
    """Whether an RL step's picks go to samples.md: the first step, every ``every_steps``-th, and
    the stage's last (also when its time limit, not its step count, ends it)."""
    return step == 1 or stage_done or step % every_steps == 0


class _SftSteps:
    """An SFT stage's steps over its demonstrations."""

    def __init__(self, run: _Run, policy: HFPolicy, stage: StageConfig, index: int) -> None:
        self.run, self.policy, self.stage = run, policy, stage
        # a vision policy reads the demonstrations' images as image tokens, a text policy as its rollouts show them
        vision = policy if isinstance(policy, VLMPolicy) else None
        examples = load_sft_examples(stage.data, policy.tokenizer, vision=vision)
        self.data = SftData(examples, seed=run.config.seed + index, pad_token_id=policy.pad_token_id,
                            cursor=run.state.cursor)

    def step(self, step: int, optimizer: Any, scheduler: Any) -> tuple[dict[str, float], list[RolloutTrajectory]]:
        values = sft_step(self.policy, optimizer, self.data.next_batch(self.stage.batch_size),
                          max_grad_norm=self.stage.optim.max_grad_norm, scheduler=scheduler)
        self.run.state.cursor = self.data.cursor
        return values, []

    def close(self) -> None:
        """Nothing to free."""


class _RlSteps:
    """An RL stage's steps: tasks → rollouts → scores (in rounds with dynamic sampling:
    ``trainer.dynamic``) → one GRPO update → the sampler's weights."""

    def __init__(self, run: _Run, policy: HFPolicy, stage: StageConfig, index: int, start: int,
                 rollouts: StageRollouts) -> None:
        self.run, self.policy, self.stage = run, policy, stage
        self.rollouts = rollouts
        if run.state.draws is None:   # a fresh stage, or a checkpoint from before draws were saved (n a step)
            run.state.draws = TaskDraws(cursor=start * stage.rollout.prompts_per_step)
        self.draws = run.state.draws
        self.reference = _reference(run, policy, stage, index, start)
        # the weights so far (earlier stages, a resumed checkpoint) are version global_step
        rollouts.sync_weights(policy.model, run.state.global_step)

    def step(self, step: int, optimizer: Any, scheduler: Any) -> tuple[dict[str, float], list[RolloutTrajectory]]:
        version = self.run.state.global_step + 1
        self.policy.model.eval()
        try:
            # pipelined workers submit the next steps' groups up to the stage's last step
            rolled = roll_step(self.rollouts, self.draws, version, last=version + self.stage.steps - step)
        finally:
            self.policy.model.train()
        trajectories = rolled.batch
        self._count_failure(step, rolled.rolled)
        # the memory records, updates utilities and distills on the loop while the update trains
        memory = self.rollouts.memory_feedback(rolled.rolled, step, self.run.run_dir.name)
        values = grpo_update(self.policy, optimizer, trajectories, self.stage, step - 1, reference=self.reference,
                             total_steps=self.stage.steps)
        self.rollouts.sync_weights(self.policy.model, version)
        values["lr"] = float(optimizer.param_groups[0]["lr"])
        with warnings.catch_warnings():
            # the schedule follows the step count even when every group was filtered out and no
            # optimizer step ran; torch warns about exactly that order
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            scheduler.step()
        values["rollout_seconds"] = rolled.rollout_seconds
        values["reward_system_errors"] = float(rolled.reward_system_errors)
        # the weights the step's rollouts were sampled with (the previous step's update)
        values["sampled_weight_version"] = float(max((v for t in rolled.rolled for v in t.weight_versions), default=0))
        values.update(_task_metrics(self.stage, trajectories))
        values.update(rolled.metrics)
        if memory is not None:
            values.update(memory.result())
        return values, _sample_picks(rolled.rolled)

    def _count_failure(self, step: int, trajectories: list[RolloutTrajectory]) -> None:
        """Count a step whose every trajectory failed; ``services.max_failed_steps`` in a row raise
        ``ServicesFailed``, naming the service and its error."""
        if not trajectories or any(t.status != TrajectoryStatus.INFRA_FAILED for t in trajectories):
            self.run.failed_steps = 0
            return
        self.run.failed_steps += 1
        limit = self.run.config.services.max_failed_steps
        what = self.rollouts.describe_failures(trajectories)
        if self.run.failed_steps >= limit:
            raise ServicesFailed(f"{self.run.failed_steps} RL step(s) in a row had every trajectory fail "
                                 f"(services.max_failed_steps = {limit}); the last, step {step}: {what}")
        logger.warning("stage %s step %d: every trajectory failed, nothing to learn (%d in a row, the run fails "
                       "at services.max_failed_steps = %d): %s", self.stage.name or self.stage.kind, step,
                       self.run.failed_steps, limit, what)

    def close(self) -> None:
        """Close the stage's tool stream."""
        self.rollouts.close()


def export_policy(policy: HFPolicy, out: Path) -> Path:
    """The policy as a loadable HF checkpoint (``save_pretrained`` with its tokenizer), so that
    ``rlyard eval --checkpoint`` and later runs can start from any finished stage."""
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    policy.save_pretrained(tmp)      # a vision policy writes its image processor's config too
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    logger.info("stage model exported to %s", out)
    return out


def _reference(run: _Run, policy: HFPolicy, stage: StageConfig, index: int, start: int) -> HFPolicy | None:
    """The frozen KL reference (the policy at the stage's start), or None when ``kl_coef`` is 0."""
    if stage.algorithm.kl_coef <= 0:
        return None
    path = run.ckpt_dir / f"reference-{index}.pt"
    if start == 0 or not path.exists():
        run.ckpt_dir.mkdir(parents=True, exist_ok=True)
        torch.save(policy.model.state_dict(), path)
        return frozen_reference(policy)
    reference = frozen_reference(policy)
    reference.model.load_state_dict(torch.load(path, weights_only=True))
    return reference


def _task_metrics(stage: StageConfig, trajectories: list[RolloutTrajectory]) -> dict[str, float]:
    """accuracy: the share of scored trajectories whose first reward of the spec (the task's
    own reward, e.g. sql_execution) is 1; tool latency: mean time of one tool call."""
    out: dict[str, float] = {}
    first = next(iter(stage.reward), None)
    scored = [t for t in trajectories if t.reward is not None]
    if first is not None and scored:
        out["accuracy"] = sum(t.reward_components.get(first, 0.0) >= 1.0 for t in scored) / len(scored)
    latencies = [ms for t in trajectories for ms in t.tool_latency_ms]
    if latencies:
        out["tool_latency_ms"] = sum(latencies) / len(latencies)
    out["infra_failed"] = float(sum(t.status == TrajectoryStatus.INFRA_FAILED for t in trajectories))
    return out


def _sample_picks(trajectories: list[RolloutTrajectory]) -> list[RolloutTrajectory]:
    """The step's trajectories worth a look: the best and the worst scored one, and the best of
    those the graph memory prompted when neither of them was."""
    scored = [t for t in trajectories if t.reward is not None] or list(trajectories)
    ranked = sorted(scored, key=lambda t: -1e9 if t.reward is None else t.reward)
    picks = ([ranked[-1], ranked[0]] if len(ranked) > 1 else ranked)[:SAMPLES_PER_STEP]
    prompted = [t for t in ranked if t.memories]
    if prompted and not any(t.memories for t in picks):
        picks.append(prompted[-1])
    return picks
