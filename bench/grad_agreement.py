"""Can GRPO learn from here? Gradient agreement of GRPO batches against SFT batches, at one checkpoint.

With the weights held fixed, the bench takes the gradient of ``--batches`` independent SFT batches
(demonstrations) and of as many GRPO batches (rollouts through the embedded SQL tool server, scored
by the reward service, the demo's GRPO loss, first update) and reports how alike the batches of each
kind are (``experiments.agreement``: mean pairwise cosine; signal share = mean pairwise dot / mean squared
norm, the share of one batch gradient that is signal). SFT is the baseline of the same run: the
``ratio`` is GRPO's signal share over SFT's, and ``grpo_batch_for_sft_share`` the trajectories per
step GRPO would need to agree as well as SFT does (noise falls as 1/batch). Five minutes here say
whether a design can learn before a 30-minute run of ``bench/sql_learning.py``.

    python -m bench.grad_agreement --seed 2 --model runs/bench-sql-learning/seed2-control/models/more_sft \\
        --label seed2-sft579
    python -m bench.grad_agreement --seed 2 --model M --same-tasks           # resample one draw of questions
    python -m bench.grad_agreement --seed 2 --model M --template reviews_in_year   # one question template
    python -m bench.grad_agreement --seed 0 --model M --demos D --label L --temperature 0.7

Every run adds (or replaces) its ``--label`` in ``bench/results/grad_agreement.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress

from experiments.agreement import agreement, batch_for_share, grpo_gradients, sft_gradients
from experiments.learning import LearningConfig, experiment, prepare_for, quick
from trainer.compose import open_stack
from trainer.config import parse_config
from trainer.policy.hf import HFPolicy

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "bench" / "results" / "grad_agreement.json"


def template_tasks(path: Path, template: str) -> Path:
    """The questions of one template from a task JSONL, written next to it (``<stem>.<template>.jsonl``).

    Raises:
        ValueError: no question of that template (the message lists the templates there are).
    """
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if json.loads(line).get("template") == template]
    if not kept:
        names = sorted({json.loads(line).get("template", "") for line in lines})
        raise ValueError(f"no question of template {template!r} in {path}; templates: {', '.join(names)}")
    out = path.with_name(f"{path.stem}.{template}.jsonl")
    out.write_text("".join(kept), encoding="utf-8")
    return out


def measure(cfg: LearningConfig, work: Path, model: Path | None, demos: Path | None, batches: int,
            console: Console, *, same_tasks: bool = False, tasks: Path | None = None,
            template: str = "") -> dict[str, Any]:
    """SFT and GRPO gradient agreement at ``model`` (default: the prepared, untrained policy);
    GRPO samples the world's RL questions, or ``tasks`` (a task JSONL) instead, or only those of
    question template ``template``."""
    tic = time.monotonic()
    prep = prepare_for(cfg, work)
    if tasks is not None:
        prep = dataclasses.replace(prep, train_tasks=Path(tasks))
    if template:
        prep = dataclasses.replace(prep, train_tasks=template_tasks(prep.train_tasks, template))
    start = Path(model) if model else prep.policy
    demos = Path(demos) if demos else prep.demos
    policy = HFPolicy(start)
    before = [p.detach().clone() for p in policy.model.parameters()]
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("SFT gradients", total=batches)
        sft = sft_gradients(policy, demos, batches=batches, batch_size=cfg.sft_batch_size, seed=cfg.seed,
                            on_batch=lambda k: progress.update(task, completed=k))
    sft_seconds = time.monotonic() - tic
    config = parse_config(experiment(cfg, prep, model=start))
    stage = config.stages[0]
    with open_stack(config) as stack, Progress(console=console, transient=True) as progress:
        rollouts = stack.stage(stage, stack.sampler(policy), policy.tokenizer)
        task = progress.add_task("GRPO gradients", total=batches)

        def seen(done: int, values: dict[str, float]) -> None:
            progress.update(task, completed=done,
                            description=f"GRPO gradients (batch reward {values.get('reward_mean', 0.0):.2f}, "
                                        f"kept {values.get('kept', 0):.0f})")

        policy.model.eval()
        try:
            grpo = grpo_gradients(policy, rollouts, stage, batches=batches, on_batch=seen, same_tasks=same_tasks)
        finally:
            policy.model.train()
            rollouts.close()
    a_sft = agreement(sft)
    trajectories = cfg.group_size * cfg.prompts_per_step
    kept = [m.get("kept", 0.0) for m in grpo.batch_metrics]
    rewards = [m.get("reward_mean", 0.0) for m in grpo.batch_metrics]
    sampled = {"batch": trajectories, "batches_sampled": len(grpo.batch_metrics),
               "reward_mean": round(sum(rewards) / len(rewards), 4) if rewards else 0.0,
               "kept_mean": round(sum(kept) / len(kept), 2) if kept else 0.0}
    result: dict[str, Any] = {"model": str(start), "demos": str(demos), "config": dataclasses.asdict(cfg),
                              "tasks": str(prep.train_tasks), "template": template, "same_tasks": same_tasks,
                              "sft": {**a_sft.to_json(), "batch": cfg.sft_batch_size}}
    if len(grpo.grads) < 2:
        # every group was uniform (the policy always or never succeeds): GRPO has no gradient here
        result.update(grpo={"batches": len(grpo.grads), **sampled, "no_signal": True}, ratio=None,
                      grpo_batch_for_sft_share=None)
    else:
        a_grpo = agreement(grpo.grads)
        share = batch_for_share(a_grpo.signal_share, trajectories, a_sft.signal_share) \
            if 0 < a_sft.signal_share < 1 and a_grpo.signal_share < 1 else None
        result.update(grpo={**a_grpo.to_json(), **sampled, "no_signal": False},
                      ratio=round(a_grpo.signal_share / a_sft.signal_share, 4) if a_sft.signal_share > 0 else None,
                      grpo_batch_for_sft_share=None if share is None else round(share))
    # the measurement must not move the weights (every batch sees the same policy)
    result["weights_unchanged"] = all(torch.equal(a, b) for a, b in zip(before, policy.model.parameters(), strict=True))
    result["seconds"] = {"sft": round(sft_seconds, 1), "total": round(time.monotonic() - tic, 1)}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", type=Path, help="the checkpoint to measure at (default: the prepared policy)")
    parser.add_argument("--demos", type=Path, help="SFT demonstrations for the baseline (default: the world's)")
    parser.add_argument("--work", type=Path, help="the prepared world (default: RUNS_DIR/seed<S>-work)")
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "bench-sql-learning")
    parser.add_argument("--n-demos", type=int, default=LearningConfig.n_demos)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--temperature", type=float, default=LearningConfig.rl_temperature)
    parser.add_argument("--group-size", type=int, default=LearningConfig.group_size)
    parser.add_argument("--prompts-per-step", type=int, default=LearningConfig.prompts_per_step)
    parser.add_argument("--tasks", type=Path, help="GRPO's questions (a task JSONL; default: the world's RL questions)")
    parser.add_argument("--template", default="", help="GRPO samples only the RL questions of this template")
    parser.add_argument("--same-tasks", action="store_true",
                        help="every GRPO batch samples the same questions afresh (is the gradient of given "
                             "questions consistent, apart from carrying over to others?)")
    parser.add_argument("--label", default="", help="the measurement's key in the output (default: derived)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--quick", action="store_true", help="a tiny smoke configuration (seconds, not a result)")
    ns = parser.parse_args(argv)
    if ns.batches < 2:
        parser.error("--batches must be >= 2 (agreement compares pairs of batches)")
    console = Console(soft_wrap=True)     # whole lines (paths stay unbroken in logs)
    cfg = LearningConfig(seed=ns.seed, n_demos=ns.n_demos, rl_temperature=ns.temperature,
                         group_size=ns.group_size, prompts_per_step=ns.prompts_per_step)
    if ns.quick:
        cfg = dataclasses.replace(quick(cfg), group_size=4, prompts_per_step=4)
    work = ns.work or ns.runs_dir / f"seed{ns.seed}-work"
    label = ns.label or "-".join(filter(None, [
        f"seed{ns.seed}", f"{ns.model.parent.parent.name}-{ns.model.name}" if ns.model else "policy",
        ns.template, "same-tasks" if ns.same_tasks else ""]))
    try:
        result = measure(cfg, work, ns.model, ns.demos, ns.batches, console, same_tasks=ns.same_tasks,
                         tasks=ns.tasks, template=ns.template)
    except ValueError as exc:       # e.g. a template with no RL question: the message names the others
        console.print(f"[red]error:[/] {exc}")
        return 2
    result["quick"] = ns.quick
    result["date"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    report: dict[str, Any] = {"benchmark": "grad_agreement", "measurements": {}}
    if ns.output.is_file():
        report = json.loads(ns.output.read_text(encoding="utf-8"))
    report["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    report["measurements"][label] = result
    ns.output.parent.mkdir(parents=True, exist_ok=True)
    ns.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    s, g = result["sft"], result["grpo"]
    console.print(f"[bold]{label}[/]: SFT batches of {s['batch']} agree at cosine {s['mean_cosine']:.3f} "
                  f"(signal share {s['signal_share']:.3f})")
    if g["no_signal"]:
        console.print(f"GRPO: {g['batches']} of {g['batches_sampled']} sampled batches had a group with signal "
                      f"(batch reward {g['reward_mean']:.2f}): no gradient to compare")
    else:
        console.print(f"GRPO batches of {g['batch']} agree at cosine {g['mean_cosine']:.4f} (signal share "
                      f"{g['signal_share']:.4f}); ratio to SFT {result['ratio']}; "
                      f"{result['grpo_batch_for_sft_share']} trajectories a step would agree as SFT's batches do")
    console.print(f"wrote {ns.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
