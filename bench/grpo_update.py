"""How much faster is a GRPO update when each group's prompt is computed once?

``grpo_update`` (``trainer/grpo.py``) on one batch of the learning demo's shape, once with
``algorithm.shared_prefix: false`` (every row's forward computes its own copy of the prompt) and
once with ``true`` (``trainer/policy/shared_prefix.py``: a group's prompt once per forward, the
samples' continuations against its cached keys and values). The demo's settings: 8 questions × 8
samples, ``updates_per_batch`` 2, micro-batches of 8 (``experiments.learning``), the tiny policy
(``LearningConfig.size``) with the demo world's tokenizer (``experiments.sql_learning.prepare``,
without the copying warm-up: the weights do not change the cost).

Two prompt shapes, the same continuations:

- ``demo``: the demo's compact prompt (system message without the schema, ~95 tokens);
- ``schema``: the same questions with the database schema in the system message (~730 tokens),
  the shape of a prompt that carries the schema or tool schemas (``envs.text_to_sql`` without
  ``--no-schema``).

Continuations are the world's SFT demonstrations after their prompt (real ``sql_query`` calls,
observations with loss mask 0, the final answer; 80–440 tokens), one per sample; old log-probs
are the policy's own, rewards seeded random. Each mode runs a warm-up update, then ``--repeats``
updates alternating with the other mode; the best counts (the least disturbed by other work on a
shared machine; the 1-minute load average before and after is recorded), the median is reported
too, and the process's CPU time (``speedup_cpu``: with ``--threads 1`` the work itself, whatever
else shares the cores; with more threads it counts their spinning too). The first update's
gradient of both modes, from the same weights, is compared as well (``gradient_rel_diff``:
‖g_shared − g_plain‖ / ‖g_plain‖, float rounding only).

``python -m bench.grpo_update [--repeats 3] [--threads 2] [--quick] [--output F]`` writes
``bench/results/grpo_update.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import transformers
from rich.console import Console
from rich.table import Table

from envs.local_services.database import SCHEMA
from experiments.agreement import flat_gradient
from experiments.learning import LearningConfig
from experiments.sql_learning import Prepared, prepare
from rlyard.domain import Task
from trainer.config import AlgorithmConfig, RolloutConfig, StageConfig
from trainer.grpo import grpo_update
from trainer.parsing import Region
from trainer.policy.hf import HFPolicy
from trainer.sft import render_messages
from trainer.types import RolloutTrajectory

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "bench" / "results" / "grpo_update.json"
SHAPES = ("demo", "schema")


def _world(root: Path, cfg: LearningConfig) -> Prepared:
    """The demo's world: enough RL questions for one batch and a demonstration per sample."""
    batch = cfg.group_size * cfg.prompts_per_step
    n_demos = min(batch, 64)
    return prepare(root, seed=cfg.seed, n_train=n_demos + cfg.prompts_per_step + 100,
                   n_heldout_a=6, n_heldout_b=2, n_heldout_c=2, n_demos=n_demos,
                   max_tool_calls=cfg.max_tool_calls, size=cfg.size, copy_steps=0)


def _prompt(tokenizer: Any, messages: list[dict[str, Any]], shape: str) -> list[int]:
    if shape == "schema":
        messages = [{"role": "system", "content": messages[0]["content"] + "\n" + SCHEMA.strip()}, *messages[1:]]
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return [int(t) for t in (rendered if isinstance(rendered, list) else rendered["input_ids"])]


def _continuations(tokenizer: Any, prep: Prepared, n: int) -> list[tuple[list[int], list[int]]]:
    """(tokens, loss mask) after the prompt of ``n`` demonstrations, cycled if fewer."""
    demos = [json.loads(line) for line in prep.demos.read_text().splitlines() if line.strip()]
    out = []
    for i in range(n):
        ex = render_messages(tokenizer, demos[i % len(demos)]["messages"])
        first = ex.loss_mask.index(1)                 # the first token the policy generated
        out.append((ex.token_ids[first:], ex.loss_mask[first:]))
    return out


def trajectories(policy: HFPolicy, prep: Prepared, cfg: LearningConfig, shape: str) -> list[RolloutTrajectory]:
    """One batch: ``prompts_per_step`` groups of ``group_size`` samples of the world's RL questions."""
    tasks = [json.loads(line) for line in prep.train_tasks.read_text().splitlines()][: cfg.prompts_per_step]
    tok = policy.tokenizer
    conts = _continuations(tok, prep, len(tasks) * cfg.group_size)
    rng = random.Random(cfg.seed)
    trajs = []
    for g, task in enumerate(tasks):
        prompt = _prompt(tok, task["messages"], shape)
        for s in range(cfg.group_size):
            tokens, mask = conts[g * cfg.group_size + s]
            regions = [int(Region.OTHER if m else Region.OBSERVATION) for m in mask]
            trajs.append(RolloutTrajectory(task=Task(task["task_id"], []), group_id=g, sample_index=s,
                                           prompt_ids=prompt, token_ids=tokens, loss_mask=mask,
                                           old_logprobs=[0.0] * len(tokens), regions=regions,
                                           reward=float(rng.random() < 0.5) + 0.1 * s))
    for t in trajs:          # the policy's own log-probs: ratios near 1, as right after sampling
        logp, _ = policy.forward_logprobs(torch.tensor([t.prompt_ids + t.token_ids]), compute_entropy=False)
        p = len(t.prompt_ids)
        t.old_logprobs = [float(logp[0, p + j - 1]) if m else 0.0 for j, m in enumerate(t.loss_mask)]
    return trajs


def _stage(cfg: LearningConfig, shared: bool) -> StageConfig:
    """The demo's GRPO stage (``experiments.learning.experiment``) with the switch set."""
    return StageConfig(kind="rl", steps=1, reward={"sql_execution": 1.0},
                       rollout=RolloutConfig(group_size=cfg.group_size, prompts_per_step=cfg.prompts_per_step,
                                             temperature=cfg.rl_temperature),
                       algorithm=AlgorithmConfig(kl_coef=0.0, clip_low=0.2, clip_high=0.2,
                                                 updates_per_batch=cfg.updates_per_batch,
                                                 micro_batch_size=cfg.group_size, loss_agg="seq-mean-token-mean",
                                                 shared_prefix=shared))


def _first_gradient(model_dir: Path, trajs: list[RolloutTrajectory], stage: StageConfig) -> torch.Tensor:
    """The gradient of the first update from the checkpoint's weights."""
    policy = HFPolicy(model_dir)
    one = dataclasses.replace(stage, algorithm=dataclasses.replace(stage.algorithm, updates_per_batch=1))
    seen: list[torch.Tensor] = []
    grpo_update(policy, torch.optim.SGD(policy.model.parameters(), lr=0.0), trajs, one, step=0,
                on_gradient=lambda _u: seen.append(flat_gradient(policy.model).clone()))
    return seen[0]


def measure(model_dir: Path, prep: Prepared, cfg: LearningConfig, shape: str, repeats: int) -> dict[str, Any]:
    """Both modes on one batch of ``shape``: seconds per update, the speed-up, the gradient check."""
    policy = HFPolicy(model_dir)
    trajs = trajectories(policy, prep, cfg, shape)
    stages = {"plain": _stage(cfg, False), "shared_prefix": _stage(cfg, True)}
    plain_grad = _first_gradient(model_dir, trajs, stages["plain"])
    shared_grad = _first_gradient(model_dir, trajs, stages["shared_prefix"])
    optimizer = torch.optim.AdamW(policy.model.parameters(), lr=1e-6)
    seconds: dict[str, list[float]] = {mode: [] for mode in stages}
    cpu: dict[str, list[float]] = {mode: [] for mode in stages}
    for rep in range(repeats + 1):               # the first round warms up
        for mode, stage in stages.items():
            tic, cpu_tic = time.perf_counter(), time.process_time()
            metrics = grpo_update(policy, optimizer, trajs, stage, step=0)
            if rep:
                seconds[mode].append(time.perf_counter() - tic)
                cpu[mode].append(time.process_time() - cpu_tic)
                Console(stderr=True).print(f"{shape} {mode}: {seconds[mode][-1]:.2f} s, {cpu[mode][-1]:.2f} s of CPU")
            if metrics.get("updated") != 1.0 or metrics["kept"] != len(trajs):
                raise RuntimeError(f"{mode}: expected an update on every trajectory, got {metrics}")
    prompt = [len(t.prompt_ids) for t in trajs]
    suffix = [len(t.token_ids) for t in trajs]
    out: dict[str, Any] = {
        "trajectories": len(trajs),
        "prompt_tokens_mean": round(statistics.mean(prompt), 1),
        "continuation_tokens": {"min": min(suffix), "mean": round(statistics.mean(suffix), 1), "max": max(suffix)},
        "loss_tokens": sum(t.num_generated for t in trajs),
        "prompt_share_of_tokens": round(sum(prompt) / (sum(prompt) + sum(suffix)), 3),
    }
    for mode, times in seconds.items():
        out[mode] = {"seconds": [round(s, 3) for s in times], "best_seconds": round(min(times), 3),
                     "median_seconds": round(statistics.median(times), 3),
                     "cpu_seconds": [round(s, 3) for s in cpu[mode]], "best_cpu_seconds": round(min(cpu[mode]), 3)}
    # the best of the alternating repeats is the least disturbed by other work on the machine
    out["speedup"] = round(out["plain"]["best_seconds"] / out["shared_prefix"]["best_seconds"], 2)
    out["speedup_median"] = round(out["plain"]["median_seconds"] / out["shared_prefix"]["median_seconds"], 2)
    # the work itself: with one torch thread, CPU time is what the update costs whatever else runs
    out["speedup_cpu"] = round(out["plain"]["best_cpu_seconds"] / out["shared_prefix"]["best_cpu_seconds"], 2)
    out["gradient_rel_diff"] = float(f"{float((shared_grad - plain_grad).norm() / plain_grad.norm()):.3g}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the demo uses the machine's cores)")
    parser.add_argument("--quick", action="store_true", help="2 groups of 2, one repeat (a smoke run, not a result)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    ns = parser.parse_args(argv)
    torch.set_num_threads(ns.threads)
    load_before = round(os.getloadavg()[0], 2)
    cfg = LearningConfig()
    repeats = ns.repeats
    if ns.quick:
        cfg, repeats = dataclasses.replace(cfg, group_size=2, prompts_per_step=2), 1
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        prep = _world(Path(tmp) / "world", cfg)
        for shape in SHAPES:
            results[shape] = measure(prep.policy, prep, cfg, shape, repeats)
    report = {
        "benchmark": "grpo_update",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "torch_threads": ns.threads, "python": platform.python_version(),
                    "torch": torch.__version__, "transformers": transformers.__version__,
                    "loadavg_1m_before": load_before, "loadavg_1m_after": round(os.getloadavg()[0], 2)},
        "config": {"size": cfg.size, "groups": cfg.prompts_per_step, "group_size": cfg.group_size,
                   "updates_per_batch": cfg.updates_per_batch, "micro_batch_size": cfg.group_size,
                   "repeats": repeats, "quick": ns.quick},
        **results,
    }
    ns.output.parent.mkdir(parents=True, exist_ok=True)
    ns.output.write_text(json.dumps(report, indent=2) + "\n")
    table = Table("prompt", "prompt tokens", "continuation tokens", "plain s", "shared prefix s", "speed-up",
                  "CPU-time speed-up", "gradient rel. diff", title="one grpo_update, best of the repeats")
    for shape in SHAPES:
        r = results[shape]
        c = r["continuation_tokens"]
        table.add_row(shape, f"{r['prompt_tokens_mean']:.0f}", f"{c['min']}–{c['max']}",
                      f"{r['plain']['best_seconds']:.2f}", f"{r['shared_prefix']['best_seconds']:.2f}",
                      f"{r['speedup']:.2f}×", f"{r['speedup_cpu']:.2f}×", f"{r['gradient_rel_diff']:.1e}")
    Console().print(table)
    Console().print(f"wrote {ns.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
