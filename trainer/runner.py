"""Run an experiment: its stages in order, with checkpoints, resume, events and run outputs.

Steps are counted per stage (``step`` 1..stage.steps) and across the run (``global_step``);
checkpoints are named by the global step and hold the stage index, the steps done in that stage,
the SFT data cursor, the run's wall time so far, the optimizer and scheduler of the current stage
and every RNG state. A checkpoint is written every ``checkpoint.every_steps`` global steps, at the
end of each stage, and when ``stop`` is set or SIGTERM/SIGINT arrives (then the run returns with
state STOPPED). With ``resume=True`` a run continues from the newest checkpoint in
``run_dir/checkpoints``; the result equals an uninterrupted run (same seed, same hardware).

RL stages get their work from injected callables:
``task_source(stage, step) -> list[Task]``, ``rollout_fn(tasks, global_step) -> trajectories``
(group ids and group sizes are the rollout engine's business), and ``score_fn(trajectories)``,
which fills ``reward`` or marks a trajectory INFRA_FAILED. With ``kl_coef > 0`` the reference is
the policy as it was when the RL stage began, kept in ``checkpoints/reference-<stage>.pt``.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rlyard.errors import ConfigError
from trainer.checkpoint import (
    Checkpoint,
    StopRequested,
    latest_checkpoint,
    restore_checkpoint,
    save_checkpoint,
    seed_everything,
)
from trainer.config import ExperimentConfig, StageConfig
from trainer.grpo import frozen_reference, grpo_update
from trainer.outputs import MetricsLog, plot_curves, write_report, write_samples
from trainer.policy.hf import HFPolicy
from trainer.sft import SftData, load_sft_examples, sft_step
from trainer.types import RolloutStatus, RolloutTrajectory, Task

logger = logging.getLogger(__name__)

__all__ = ["EventFn", "RolloutFn", "ScoreFn", "TaskSource", "run_experiment"]

RolloutFn = Callable[[list[Task], int], list[RolloutTrajectory]]
ScoreFn = Callable[[list[RolloutTrajectory]], None]
TaskSource = Callable[[StageConfig, int], list[Task]]
EventFn = Callable[[dict[str, Any]], None]

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

    def __init__(self, config: ExperimentConfig, run_dir: Path, on_event: EventFn | None) -> None:
        self.config = config
        self.run_dir = run_dir
        self.ckpt_dir = run_dir / "checkpoints"
        self.on_event = on_event
        self.metrics = MetricsLog(run_dir)
        self.state: dict[str, Any] = {"stage_index": 0, "stage_step": 0, "cursor": 0, "global_step": 0,
                                      "wall_seconds": 0.0, "stage_seconds": 0.0, "stage_done": False,
                                      "stage_limit": 0.0}
        self.final_metrics: dict[str, dict[str, float]] = {}
        self.started = time.monotonic()
        self.last_saved = -1
        self.on_policy: Callable[[HFPolicy], None] | None = None
        self.stage_limit: Callable[[str, float], float | None] | None = None
        self.stage_steps: dict[int, int] = {}      # steps done by finished stages (a time limit may end one early)
        self.stage_secs: dict[int, float] = {}     # their training seconds

    def emit(self, event: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def wall(self) -> float:
        return float(self.state["wall_seconds"]) + time.monotonic() - self.started

    def save(self, policy: HFPolicy, optimizer: Any, scheduler: Any) -> Checkpoint | None:
        step = int(self.state["global_step"])
        if step == self.last_saved:
            return None
        state = dict(self.state, wall_seconds=self.wall(), final_metrics=self.final_metrics,
                     stage_steps={str(k): v for k, v in self.stage_steps.items()},
                     stage_secs={str(k): v for k, v in self.stage_secs.items()})
        state.pop("step", None)
        ckpt = save_checkpoint(self.ckpt_dir, step, model=policy.model, optimizer=optimizer, scheduler=scheduler,
                               trainer_state=state, keep=self.config.checkpoint.keep)
        self.last_saved = step
        self.emit({"type": "checkpoint", "step": step, "stage": self.state["stage_index"], "path": str(ckpt.path)})
        return ckpt

    def report(self, state: str, error: str = "") -> dict[str, Any]:
        stages = []
        for i, stage in enumerate(self.config.stages):
            idx, done = int(self.state["stage_index"]), int(self.state["stage_step"])
            steps_done = self.stage_steps.get(i, stage.steps) if i < idx else (done if i == idx else 0)
            name = _stage_name(stage, i)
            stages.append({"name": name, "kind": stage.kind, "steps": stage.steps, "steps_done": steps_done,
                           "seconds": round(self.stage_secs.get(i, 0.0), 3),
                           "final_metrics": self.final_metrics.get(name, {})})
        last = next((s["final_metrics"] for s in reversed(stages) if s["final_metrics"]), {})
        report: dict[str, Any] = {
            "run_id": self.run_dir.name, "name": self.config.name, "state": state, "seed": self.config.seed,
            "config": dataclasses.asdict(self.config), "stages": stages,
            "steps": int(self.state["global_step"]), "final_metrics": last,
            "wall_seconds": round(self.wall(), 3), "run_dir": str(self.run_dir),
            "models": {name: str(self.run_dir / "models" / name)
                       for name in (_stage_name(s, i) for i, s in enumerate(self.config.stages))
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
    rollout_fn: RolloutFn | None = None,
    score_fn: ScoreFn | None = None,
    task_source: TaskSource | None = None,
    on_event: EventFn | None = None,
    stop: threading.Event | None = None,
    resume: bool = True,
    on_policy: Callable[[HFPolicy], None] | None = None,
    stage_limit: Callable[[str, float], float | None] | None = None,
) -> dict[str, Any]:
    """Train ``config``'s stages in order, writing checkpoints and outputs under ``run_dir``.

    ``on_policy`` receives the policy being trained once it is loaded (and restored), so that a
    rollout engine samples from the very weights the updates change.

    ``stage_limit(name, max_seconds)`` is asked once when a stage starts (not when it resumes): a
    number replaces the stage's time limit (``max_seconds``; 0 = none) for this run, and a resumed
    run keeps it. The learning demo gives GRPO what is left of its total time budget this way.

    Returns the report (also written to ``run_dir/report.json``); ``report["state"]`` is
    SUCCEEDED or STOPPED. Events go to ``on_event``: ``{"type": "state", "state": ...}``,
    ``{"type": "metrics", "stage", "step", "global_step", "values"}`` and
    ``{"type": "checkpoint", "step", "path"}``.

    Raises:
        ConfigError: an RL stage without ``rollout_fn``, ``score_fn`` and ``task_source``, or bad SFT data.
        Exception: whatever a step raised, after the FAILED event and report were written.
    """
    run_dir = Path(run_dir)
    missing = [n for n, f in (("rollout_fn", rollout_fn), ("score_fn", score_fn), ("task_source", task_source))
               if f is None]
    rl_stages = [_stage_name(s, i) for i, s in enumerate(config.stages) if s.kind == "rl"]
    if rl_stages and missing:
        raise ConfigError(f"rl stage(s) {', '.join(rl_stages)} need {', '.join(missing)}: run them through the "
                          "trainer service (which connects the rollout engine and reward service) or pass them")
    run_dir.mkdir(parents=True, exist_ok=True)
    run = _Run(config, run_dir, on_event)
    run.on_policy = on_policy
    run.stage_limit = stage_limit
    stop_event = stop or threading.Event()
    try:
        with StopRequested() as signals:
            state = _train(run, rollout_fn, score_fn, task_source, stop_event, signals, resume)
    except Exception as exc:
        logger.exception("run %s failed", run_dir.name)
        report = run.finish_outputs(run.report("FAILED", f"{type(exc).__name__}: {exc}"))
        run.emit({"type": "state", "state": "FAILED", "run_id": run_dir.name, "error": report["error"]})
        raise
    report = run.finish_outputs(run.report(state))
    run.emit({"type": "state", "state": state, "run_id": run_dir.name, "step": report["steps"],
              "report": str(run_dir / "report.json")})
    return report


def _train(
    run: _Run,
    rollout_fn: RolloutFn | None,
    score_fn: ScoreFn | None,
    task_source: TaskSource | None,
    stop: threading.Event,
    signals: StopRequested,
    resume: bool,
) -> str:
    """The stage loop; returns SUCCEEDED or STOPPED."""
    config = run.config
    seed_everything(config.seed)
    dtype = torch.bfloat16 if config.model.dtype == "bfloat16" else torch.float32
    policy = HFPolicy(config.model.path, dtype=dtype)
    policy.model.train()
    if run.on_policy is not None:
        run.on_policy(policy)
    ckpt = latest_checkpoint(run.ckpt_dir) if resume else None
    if ckpt is not None:
        saved = ckpt.trainer_state
        run.state.update({k: saved[k] for k in run.state if k in saved})
        if "stage_limit" not in saved:   # a checkpoint written before stage_limit existed: the config's
            run.state["stage_limit"] = config.stages[int(run.state["stage_index"])].max_seconds
        run.final_metrics = saved.get("final_metrics", {})
        run.stage_steps = {int(k): int(v) for k, v in saved.get("stage_steps", {}).items()}
        run.stage_secs = {int(k): float(v) for k, v in saved.get("stage_secs", {}).items()}
        run.metrics.truncate_after(int(run.state["global_step"]))
        run.last_saved = int(run.state["global_step"])
        logger.info("run %s resumes from %s", run.run_dir.name, ckpt.path)
    else:  # a fresh start: outputs of an earlier attempt in this directory would mix in
        for stale in (run.metrics.path, run.run_dir / "samples.md"):
            stale.unlink(missing_ok=True)
    run.emit({"type": "state", "state": "RUNNING", "run_id": run.run_dir.name,
              "resumed_from": None if ckpt is None else int(run.state["global_step"])})

    def stopping() -> bool:
        return stop.is_set() or signals.requested

    for index, stage in enumerate(config.stages):
        if index < int(run.state["stage_index"]):
            continue
        name = _stage_name(stage, index)
        optimizer, scheduler = _build_optimizer(policy, stage)
        start = 0
        if ckpt is not None and index == int(run.state["stage_index"]):
            restore_checkpoint(ckpt, model=policy.model, optimizer=optimizer, scheduler=scheduler)
            start = int(run.state["stage_step"])
        if index != int(run.state["stage_index"]) or ckpt is None:
            limit = None if run.stage_limit is None else run.stage_limit(name, stage.max_seconds)
            if limit is not None and limit < 0:
                raise ValueError(f"stage {name}: stage_limit gave {limit} s; a time limit is >= 0 (0 = none)")
            run.state.update(stage_index=index, stage_step=0, cursor=0, stage_seconds=0.0, stage_done=False,
                             stage_limit=stage.max_seconds if limit is None else float(limit))
            if limit is not None and limit != stage.max_seconds:
                logger.info("stage %s: time limit %.0f s (configured: %.0f s)", name, limit, stage.max_seconds)
        ckpt = None
        data: SftData | None = None
        if stage.kind == "sft":
            examples = load_sft_examples(stage.data, policy.tokenizer)
            data = SftData(examples, seed=config.seed + index, pad_token_id=policy.pad_token_id,
                           cursor=int(run.state["cursor"]))
        reference = _reference(run, policy, stage, index, start) if stage.kind == "rl" else None
        for step in range(start + 1, stage.steps + 1):
            if run.state["stage_done"]:
                break
            if stopping():
                run.save(policy, optimizer, scheduler)
                return "STOPPED"
            tic = time.monotonic()
            picks: list[RolloutTrajectory] = []
            if data is not None:
                values = sft_step(policy, optimizer, data.next_batch(stage.batch_size),
                                  max_grad_norm=stage.optim.max_grad_norm, scheduler=scheduler)
                run.state["cursor"] = data.cursor
            else:
                assert rollout_fn is not None and score_fn is not None and task_source is not None
                values, picks = _rl_step(run, policy, optimizer, stage, step, reference,
                                         rollout_fn, score_fn, task_source)
                values["lr"] = float(optimizer.param_groups[0]["lr"])
                with warnings.catch_warnings():
                    # the schedule follows the step count even when every group was filtered out
                    # and no optimizer step ran; torch warns about exactly that order
                    warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
                    scheduler.step()
            seconds = time.monotonic() - tic
            values["step_seconds"] = seconds
            values["tokens_per_s"] = values.get("tokens", 0.0) / max(seconds, 1e-9)
            run.state["stage_step"] = step
            run.state["global_step"] = int(run.state["global_step"]) + 1
            run.state["stage_seconds"] = float(run.state["stage_seconds"]) + seconds
            max_seconds = float(run.state["stage_limit"])
            out_of_time = bool(max_seconds) and float(run.state["stage_seconds"]) >= max_seconds
            run.state["stage_done"] = step == stage.steps or out_of_time
            if picks and (step == 1 or run.state["stage_done"] or step % config.checkpoint.every_steps == 0):
                # the stage's last step too when the time limit, not the step count, ends it
                write_samples(run.run_dir, name, step, picks, policy.tokenizer)
            gstep = int(run.state["global_step"])
            run.final_metrics[name] = values
            run.metrics.append({"stage": name, "stage_index": index, "step": step, "global_step": gstep,
                                "wall_seconds": round(run.wall(), 3), **values})
            run.emit({"type": "metrics", "stage": name, "step": step, "global_step": gstep, "values": values})
            if out_of_time and step < stage.steps:
                logger.info("stage %s: time limit of %.0f s reached after %d of %d steps", name, max_seconds,
                            step, stage.steps)
            if gstep % config.checkpoint.every_steps == 0 or run.state["stage_done"]:
                run.save(policy, optimizer, scheduler)
        if run.state["stage_done"]:
            run.stage_steps[index] = int(run.state["stage_step"])
            run.stage_secs[index] = float(run.state["stage_seconds"])
            export_policy(policy, run.run_dir / "models" / name)
        if stopping() and index + 1 < len(config.stages):
            run.save(policy, optimizer, scheduler)
            return "STOPPED"
    return "SUCCEEDED"


def export_policy(policy: HFPolicy, out: Path) -> Path:
    """The policy as a loadable HF checkpoint (``save_pretrained`` with its tokenizer), so that
    ``rlyard eval --checkpoint`` and later runs can start from any finished stage."""
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    policy.model.save_pretrained(tmp)
    policy.tokenizer.save_pretrained(tmp)
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
    out["infra_failed"] = float(sum(t.status == RolloutStatus.INFRA_FAILED for t in trajectories))
    return out


def _rl_step(
    run: _Run,
    policy: HFPolicy,
    optimizer: torch.optim.Optimizer,
    stage: StageConfig,
    step: int,
    reference: HFPolicy | None,
    rollout_fn: RolloutFn,
    score_fn: ScoreFn,
    task_source: TaskSource,
) -> tuple[dict[str, float], list[RolloutTrajectory]]:
    """Tasks → rollouts → scores → one GRPO update; the step's metrics and its sample picks (the
    caller writes them to samples.md at the steps that get a section)."""
    tasks = task_source(stage, step)
    tic = time.monotonic()
    trajectories = rollout_fn(tasks, int(run.state["global_step"]) + 1)
    rollout_seconds = time.monotonic() - tic
    score_fn(trajectories)
    values = grpo_update(policy, optimizer, trajectories, stage, step - 1, reference=reference,
                         total_steps=stage.steps)
    values["rollout_seconds"] = rollout_seconds
    values.update(_task_metrics(stage, trajectories))
    return values, _sample_picks(trajectories)


def _sample_picks(trajectories: list[RolloutTrajectory]) -> list[RolloutTrajectory]:
    """The step's trajectories worth a look: the best and the worst scored one."""
    scored = [t for t in trajectories if t.reward is not None] or list(trajectories)
    ranked = sorted(scored, key=lambda t: -1e9 if t.reward is None else t.reward)
    picks = [ranked[-1], ranked[0]] if len(ranked) > 1 else ranked
    return picks[:SAMPLES_PER_STEP]
