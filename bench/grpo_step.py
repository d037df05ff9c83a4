"""How much faster is the learning demo's GRPO step with each trajectory's KV cache kept across turns
and each group's prompt computed once in the update?

The demo's step at its sizes (``experiments.learning.LearningConfig`` defaults: 8 questions × 8
samples, up to 3 tool calls, 200 new tokens a turn, 1024 in all, observations of at most 96 tokens)
over the embedded SQL tool server and reward service (``trainer.compose.open_stack``), on a policy in
the demo's state: the world of ``prepare_for`` and its SFT checkpoint (``--model``; by default SFT on
the world's demonstrations for the demo's number of steps, kept under ``--work`` and reused by the
next run). Two copies of that policy train side by side from the same weights and seeds, one with
``rollout.kv_cache`` and ``algorithm.shared_prefix`` off (the path before issue 20) and one with
both on (the default), their steps alternating so that both see the same
machine. A step is the runner's: rollout, score, GRPO update, weight sync. Before the first step each
arm rolls out once untimed (``--warmup``; the first seconds of torch work in a process can be many
times slower on a shared machine, see bench/README.md).

    python -m bench.grpo_step [--steps 5] [--model DIR] [--threads 2] [--output F]
    python -m bench.grpo_step --quick          # a smoke run of tiny sizes (a minute, not a result)

writes ``bench/results/grpo_step.json``: per arm and step the seconds of each phase, the prompt
tokens of the rollout's requests and how many were prefilled, reused from a trajectory's cache or
shared within a group, the tokens generated; means, steps per second, and the ratios on/off.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from experiments.learning import CopyEvent, LearningConfig, experiment, prepare_for, quick
from experiments.sql_learning import Prepared
from trainer.compose import Stack, StageRollouts, open_stack
from trainer.config import StageConfig, parse_config
from trainer.grpo import grpo_update
from trainer.policy.hf import HFPolicy
from trainer.runner import run_experiment
from trainer.sampler import LocalSampler
from trainer.types import RolloutTrajectory

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "bench" / "results" / "grpo_step.json"
DEFAULT_WORK = REPO / "runs" / "bench-grpo-step"
ARMS = (("off", False), ("on", True))


def sft_checkpoint(cfg: LearningConfig, prep: Prepared, work: Path, console: Console) -> Path:
    """The demo's SFT stage on the prepared world (run once; a later run reuses its checkpoint)."""
    out = work / "sft-run" / "models" / "sft"
    if out.is_dir():
        console.print(f"SFT checkpoint {out} (from an earlier run)")
        return out
    conf = experiment(cfg, prep)
    conf.update(name="grpo-step-sft", stages=conf["stages"][:1])
    tic = time.monotonic()
    result = run_experiment(parse_config(conf), work / "sft-run")
    if result.get("state") != "SUCCEEDED" or not out.is_dir():
        raise RuntimeError(f"the SFT run ended {result.get('state')}: {result.get('error', '')}")
    console.print(f"SFT: {cfg.sft_steps} steps in {time.monotonic() - tic:.0f} s → {out}")
    return out


@dataclass
class Arm:
    """One copy of the policy, trained with the KV cache off or on."""

    name: str
    stage: StageConfig
    policy: HFPolicy
    optimizer: torch.optim.Optimizer
    sampler: LocalSampler
    rollouts: StageRollouts
    steps: list[dict[str, Any]] = field(default_factory=list)
    first: list[RolloutTrajectory] = field(default_factory=list)


def make_arm(name: str, kv_cache: bool, stage: StageConfig, model: Path, stack: Stack) -> Arm:
    """The policy at ``model``, its optimizer (the runner's AdamW; the demo's GRPO has no warm-up),
    its sampler and the stage's rollouts with ``kv_cache`` and ``shared_prefix`` both as given."""
    stage = dataclasses.replace(stage, rollout=dataclasses.replace(stage.rollout, kv_cache=kv_cache),
                                algorithm=dataclasses.replace(stage.algorithm, shared_prefix=kv_cache))
    policy = HFPolicy(model)
    opt = stage.optim
    optimizer = torch.optim.AdamW([p for p in policy.model.parameters() if p.requires_grad], lr=opt.lr,
                                  betas=opt.betas, weight_decay=opt.weight_decay)
    sampler = stack.sampler(policy)
    assert isinstance(sampler, LocalSampler), "the bench measures the local (hf) sampler"
    rollouts = stack.stage(stage, sampler, policy.tokenizer)
    rollouts.sync_weights(policy.model, 0)
    return Arm(name, stage, policy, optimizer, sampler, rollouts)


def run_step(arm: Arm, step: int) -> dict[str, Any]:
    """One GRPO step of ``arm`` as the runner takes it, timed phase by phase."""
    before, generated = arm.sampler.prefill_stats, arm.sampler.batcher.generated_tokens
    calls, rows = arm.sampler.stats
    tasks = arm.rollouts.tasks(step)
    tic = time.perf_counter()
    arm.policy.model.eval()
    try:
        trajectories = arm.rollouts.rollout(tasks, step)
    finally:
        arm.policy.model.train()
    rolled = time.perf_counter()
    arm.rollouts.score(trajectories, step)
    scored = time.perf_counter()
    values = grpo_update(arm.policy, arm.optimizer, trajectories, arm.stage, step - 1, total_steps=arm.stage.steps)
    updated = time.perf_counter()
    arm.rollouts.sync_weights(arm.policy.model, step)
    done = time.perf_counter()
    if step == 1:
        arm.first = trajectories
    after = arm.sampler.prefill_stats
    return {
        "step": step,
        "rollout_seconds": round(rolled - tic, 3), "score_seconds": round(scored - rolled, 3),
        "update_seconds": round(updated - scored, 3), "sync_seconds": round(done - updated, 3),
        "step_seconds": round(done - tic, 3),
        "prompt_tokens": after.prompt_tokens - before.prompt_tokens,
        "prefilled_tokens": after.prefilled - before.prefilled,
        "reused_tokens": after.reused - before.reused, "shared_tokens": after.shared - before.shared,
        "generated_tokens": arm.sampler.batcher.generated_tokens - generated,
        "generate_calls": arm.sampler.stats[0] - calls, "rows": arm.sampler.stats[1] - rows,
        "tool_calls": sum(t.num_tool_calls for t in trajectories),
        "reward_mean": round(values.get("reward_mean", 0.0), 4), "kept": values.get("kept", 0.0),
    }


def summary(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Means and medians of the phases, steps per second (from the mean step), token totals."""
    out: dict[str, Any] = {}
    for key in ("rollout_seconds", "score_seconds", "update_seconds", "step_seconds"):
        out[f"mean_{key}"] = round(statistics.fmean(s[key] for s in steps), 3)
        out[f"median_{key}"] = round(statistics.median(s[key] for s in steps), 3)
    out["steps_per_second"] = round(1.0 / out["mean_step_seconds"], 4)
    for key in ("prompt_tokens", "prefilled_tokens", "reused_tokens", "shared_tokens", "generated_tokens",
                "tool_calls"):
        out[key] = sum(s[key] for s in steps)
    return out


def warm_up(arm: Arm) -> float:
    """One untimed rollout of the first step's tasks (no update); its seconds."""
    tic = time.perf_counter()
    arm.policy.model.eval()
    try:
        arm.rollouts.rollout(arm.rollouts.tasks(1), 0)
    finally:
        arm.policy.model.train()
    return time.perf_counter() - tic


def measure(cfg: LearningConfig, work: Path, model: Path | None, steps: int, console: Console, *,
            warmup: bool = True) -> dict[str, Any]:
    """Both arms, ``steps`` steps each, alternating (after a warm-up rollout each)."""
    tic = time.monotonic()
    def on_event(event: object) -> None:   # the copy warm-up takes minutes: show that it moves
        if isinstance(event, CopyEvent) and event.step % 50 == 0:
            console.print(f"preparing the world: copy warm-up step {event.step}, loss {event.loss:.3f}")

    prep = prepare_for(cfg, work / "world", on_event)
    start = model or sft_checkpoint(cfg, prep, work, console)
    prepared = time.monotonic() - tic
    config = parse_config(experiment(cfg, prep, model=start))
    stage = config.stages[0]
    with open_stack(config) as stack:
        arms = [make_arm(name, on, stage, start, stack) for name, on in ARMS]
        try:
            warmups = {arm.name: round(warm_up(arm), 2) for arm in arms} if warmup else {}
            if warmups:
                console.print(f"warm-up rollouts (untimed): {warmups} s")
            for step in range(1, steps + 1):
                for arm in arms:
                    arm.steps.append(run_step(arm, step))
                    s = arm.steps[-1]
                    console.print(f"step {step} kv_cache {arm.name:>3}: rollout {s['rollout_seconds']:.2f} s, "
                                  f"update {s['update_seconds']:.2f} s, step {s['step_seconds']:.2f} s; prefilled "
                                  f"{s['prefilled_tokens']} of {s['prompt_tokens']} prompt tokens, generated "
                                  f"{s['generated_tokens']}, {s['tool_calls']} tool calls")
        finally:
            for arm in arms:
                arm.rollouts.close()
    result: dict[str, Any] = {arm.name: {**summary(arm.steps), "steps": arm.steps} for arm in arms}
    off, on = result["off"], result["on"]
    result["warmup_rollout_seconds"] = warmups
    result["ratios_on_over_off"] = {
        "steps_per_second": round(on["steps_per_second"] / off["steps_per_second"], 3),
        "steps_per_second_from_medians": round(off["median_step_seconds"] / on["median_step_seconds"], 3),
        "rollout_speedup": round(off["mean_rollout_seconds"] / on["mean_rollout_seconds"], 3),
        "rollout_speedup_from_medians": round(off["median_rollout_seconds"] / on["median_rollout_seconds"], 3),
        "prefilled_tokens": round(on["prefilled_tokens"] / max(off["prefilled_tokens"], 1), 4),
        "generated_tokens": round(on["generated_tokens"] / max(off["generated_tokens"], 1), 4),
    }
    a, b = arms[0].first, arms[1].first     # same weights and seeds: the same samples unless batches differ
    result["step1_identical_trajectories"] = sum(x.token_ids == y.token_ids for x, y in zip(a, b, strict=True))
    result["step1_trajectories"] = len(a)
    result["model"] = str(start)
    result["prepare_seconds"] = round(prepared, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="GRPO steps per arm")
    parser.add_argument("--model", type=Path, help="an SFT checkpoint (default: SFT on the prepared world, reused)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="the world and the SFT run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the demo uses the machine's cores)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run, not a result)")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false", help="no untimed rollout first")
    ns = parser.parse_args(argv)
    if ns.steps < 1:
        parser.error("--steps must be >= 1")
    console = Console(soft_wrap=True)
    torch.set_num_threads(ns.threads)
    cfg = LearningConfig(seed=ns.seed)
    if ns.quick:
        cfg = quick(cfg)
    tic = time.monotonic()
    load_before = os.getloadavg()[0]
    result = measure(cfg, ns.work, ns.model, ns.steps, console, warmup=ns.warmup)
    rollout_cfg = cfg.rollout()
    report = {
        "benchmark": "grpo_step",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "torch_threads": ns.threads, "python": platform.python_version(),
                    "torch": torch.__version__, "loadavg_1m_before": round(load_before, 2),
                    "loadavg_1m_after": round(os.getloadavg()[0], 2),
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")},
        "config": {"quick": ns.quick, "seed": ns.seed, "steps": ns.steps, "size": cfg.size,
                   "group_size": cfg.group_size, "prompts_per_step": cfg.prompts_per_step,
                   "max_turns": rollout_cfg["max_turns"], "max_new_tokens_per_turn": cfg.max_new_tokens_per_turn,
                   "max_total_tokens": cfg.max_total_tokens, "max_observation_tokens": cfg.max_observation_tokens,
                   "updates_per_batch": cfg.updates_per_batch},
        **result,
        "wall_seconds": round(time.monotonic() - tic, 1),
    }
    ns.output.parent.mkdir(parents=True, exist_ok=True)
    ns.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    table = Table("kv cache + shared prefix", "rollout s", "score s", "update s", "step s", "steps/s",
                  "prefilled", "reused", "shared", "generated")
    for name, _ in ARMS:
        r = result[name]
        table.add_row(name, f"{r['mean_rollout_seconds']:.2f}", f"{r['mean_score_seconds']:.2f}",
                      f"{r['mean_update_seconds']:.2f}", f"{r['mean_step_seconds']:.2f}",
                      f"{r['steps_per_second']:.3f}", str(r["prefilled_tokens"]), str(r["reused_tokens"]),
                      str(r["shared_tokens"]), str(r["generated_tokens"]))
    console.print(table)
    ratios = result["ratios_on_over_off"]
    console.print(f"on/off: steps per second ×{ratios['steps_per_second']:.2f}, rollout "
                  f"×{ratios['rollout_speedup']:.2f} faster, prefilled tokens ×{ratios['prefilled_tokens']:.3f}; "
                  f"step 1 identical trajectories "
                  f"{result['step1_identical_trajectories']}/{result['step1_trajectories']}; wrote {ns.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
