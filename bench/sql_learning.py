"""Does GRPO make the tiny policy better at text-to-SQL, beyond what more SFT would?

For each seed: the learning demo (``experiments.learning.run_learning``: a fresh world, tasks,
demonstrations and tiny policy from that seed; copying warm-up; SFT; GRPO with the execution
reward over the embedded SQL tool server and reward service; greedy held-out evaluation of the SFT
and the GRPO checkpoints), then the control: starting from the same SFT checkpoint, more SFT on the
same demonstrations for the wall time GRPO used, evaluated the same way.

The bar (issue 5): the mean over seeds of ``rl_accuracy - sft_accuracy`` is at least 15 points;
the control's gain is reported next to it (a gain that more SFT also gets is not RL's).

``python -m bench.sql_learning [--seeds 0 1 2] [--rl-seconds S] [--output F] [--runs-dir D] [--resume]``
writes ``bench/results/sql_learning.json`` (after every seed; ``--resume`` keeps the seeds it already
holds for the same configuration and runs the others).
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
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from experiments.learning import EvalEvent, LearningConfig, PhaseEvent, prepare_for, quick, run_learning

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "bench" / "results" / "sql_learning.json"
BAR_POINTS = 15.0
# The RL budget per seed: the probe gave its GRPO 600 s. `rlyard demo` gives it 240 s
# (LearningConfig.rl_seconds) to finish within 15 minutes; the bench measures what RL can do.
BENCH_RL_SECONDS = 600.0


def run_seed(seed: int, cfg: LearningConfig, runs_dir: Path, console: Console) -> dict[str, Any]:
    """GRPO run and its control for one seed."""
    tic = time.monotonic()
    rl_dir, control_dir = runs_dir / f"seed{seed}-grpo", runs_dir / f"seed{seed}-control"

    def log(event: Any) -> None:
        if isinstance(event, EvalEvent) and event.state == "done":
            console.print(f"  seed {seed} · {event.model}: held-out accuracy {100 * event.accuracy:.1f}%")
        elif isinstance(event, PhaseEvent):
            console.print(f"  seed {seed} · {event.phase} ({time.monotonic() - tic:.0f} s)")

    prep = prepare_for(cfg, runs_dir / f"seed{seed}-work", log)
    prepare_seconds = time.monotonic() - tic     # world, tasks, demonstrations, policy, copy warm-up
    rl = run_learning(rl_dir, cfg, on_event=log, prepared=prep)
    if rl.get("state") != "SUCCEEDED":
        raise RuntimeError(f"seed {seed}: the GRPO run ended {rl.get('state')}: {rl.get('error', '')}")
    rl_seconds = float(rl["stage_seconds"]["grpo"])
    control = run_learning(control_dir, cfg, on_event=log, control_seconds=rl_seconds,
                           sft_model=rl_dir / "models" / "sft", prepared=prep)
    if control.get("state") != "SUCCEEDED":
        raise RuntimeError(f"seed {seed}: the control run ended {control.get('state')}: {control.get('error', '')}")
    return {
        "seed": seed,
        "heldout_tasks": rl["heldout_tasks"],
        "sft_accuracy": rl["sft_accuracy"],
        "rl_accuracy": rl["rl_accuracy"],
        "rl_gain_points": round(100 * (rl["rl_accuracy"] - rl["sft_accuracy"]), 2),
        "control_accuracy": control["control_accuracy"],
        "control_gain_points": round(100 * (control["control_accuracy"] - rl["sft_accuracy"]), 2),
        "rl_seconds": round(rl_seconds, 1),
        "rl_steps": next(s["steps_done"] for s in rl["stages"] if s["name"] == "grpo"),
        "control_seconds": round(float(control["stage_seconds"]["more_sft"]), 1),
        "control_steps": next(s["steps_done"] for s in control["stages"] if s["name"] == "more_sft"),
        "wall_seconds": round(time.monotonic() - tic, 1),
        "prepare_seconds": round(prepare_seconds, 1),
        "copy_warmup": rl["copy_warmup"],
        "rl_wall_seconds": rl["wall_seconds"],
        "demo_seconds": round(prepare_seconds + rl["wall_seconds"], 1),   # `rlyard demo`'s, at --rl-seconds 240
        "by_template": {"sft": rl["by_template"]["sft"], "rl": rl["by_template"]["rl"],
                        "control": control["by_template"]["control"]},
        "by_group": {"sft": rl["by_group"]["sft"], "rl": rl["by_group"]["rl"],
                     "control": control["by_group"]["control"]},
        "errors": {"sft": rl["errors"]["sft"], "rl": rl["errors"]["rl"], "control": control["errors"]["control"]},
        "runs": {"grpo": str(rl_dir), "control": str(control_dir)},
    }


def earlier_seeds(path: Path, cfg: LearningConfig, quick_run: bool, wanted: list[int]) -> list[dict[str, Any]]:
    """The finished seeds of an earlier run in ``path`` made with the same configuration (the seed
    aside), in the order of ``wanted``; none when the file is missing or was made otherwise."""
    if not path.is_file():
        return []
    earlier = json.loads(path.read_text(encoding="utf-8"))
    same = {**dataclasses.asdict(cfg), "seed": None} == {**earlier.get("config", {}), "seed": None}
    if not same or bool(earlier.get("quick")) != quick_run:
        return []
    by_seed = {s["seed"]: s for s in earlier.get("seeds", [])}
    return [by_seed[seed] for seed in wanted if seed in by_seed]


def summarize(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over seeds and the verdict against the bar."""
    gain = statistics.mean(s["rl_gain_points"] for s in seeds)
    control = statistics.mean(s["control_gain_points"] for s in seeds)
    return {
        "mean_sft_accuracy": round(statistics.mean(s["sft_accuracy"] for s in seeds), 4),
        "mean_rl_accuracy": round(statistics.mean(s["rl_accuracy"] for s in seeds), 4),
        "mean_control_accuracy": round(statistics.mean(s["control_accuracy"] for s in seeds), 4),
        "mean_rl_gain_points": round(gain, 2),
        "mean_control_gain_points": round(control, 2),
        "rl_gain_over_control_points": round(gain - control, 2),
        "bar_points": BAR_POINTS,
        "pass": gain >= BAR_POINTS,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rl-seconds", type=float, default=BENCH_RL_SECONDS,
                        help=f"GRPO training seconds per seed, and the control's (default {BENCH_RL_SECONDS:.0f}; "
                             f"the demo uses {LearningConfig.rl_seconds:.0f})")
    parser.add_argument("--sft-steps", type=int, default=LearningConfig.sft_steps)
    parser.add_argument("--copy-steps", type=int, default=LearningConfig.copy_steps)
    parser.add_argument("--rl-temperature", type=float, default=LearningConfig.rl_temperature,
                        help=f"GRPO rollouts' sampling temperature (default {LearningConfig.rl_temperature})")
    parser.add_argument("--rl-lr", type=float, default=LearningConfig.rl_lr,
                        help=f"GRPO's learning rate (default {LearningConfig.rl_lr:g})")
    parser.add_argument("--demo-city-share", type=float, default=LearningConfig.demo_city_share,
                        help="demonstrations name only this share of the train cities (RL questions the rest)")
    parser.add_argument("--renamed-worlds", type=int, default=LearningConfig.renamed_worlds,
                        help="move the RL questions into this many renamed copies of the database (0: none)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "bench-sql-learning")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke configuration (seconds, not a result)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the seeds that --output already holds for this configuration; run the rest")
    ns = parser.parse_args(argv)
    console = Console()
    cfg = LearningConfig(rl_seconds=ns.rl_seconds, sft_steps=ns.sft_steps, copy_steps=ns.copy_steps,
                         demo_city_share=ns.demo_city_share, renamed_worlds=ns.renamed_worlds,
                         rl_temperature=ns.rl_temperature, rl_lr=ns.rl_lr)
    if ns.quick:
        cfg = quick(cfg)
    seeds: list[dict[str, Any]] = earlier_seeds(ns.output, cfg, ns.quick, ns.seeds) if ns.resume else []
    for s in seeds:
        console.print(f"seed {s['seed']}: kept from {ns.output} (GRPO {s['rl_gain_points']:+.1f} points)")

    def write(complete: bool) -> None:
        report = {
            "benchmark": "sql_learning",
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform()},
            "config": dataclasses.asdict(cfg),
            "quick": ns.quick,
            "complete": complete,          # False while seeds are still running (a killed bench keeps these)
            "seeds": seeds,
            "summary": summarize(seeds),
        }
        ns.output.parent.mkdir(parents=True, exist_ok=True)
        ns.output.write_text(json.dumps(report, indent=2) + "\n")

    for seed in ns.seeds:
        if any(s["seed"] == seed for s in seeds):
            continue
        console.print(f"[bold]seed {seed}[/]")
        seeds.append(run_seed(seed, dataclasses.replace(cfg, seed=seed), ns.runs_dir, console))
        write(complete=False)
    write(complete=True)
    summary = summarize(seeds)
    table = Table("seed", "held-out", "SFT", "GRPO", "gain", "more SFT (control)", "control gain", "RL s / steps")
    for s in seeds:
        table.add_row(str(s["seed"]), str(s["heldout_tasks"]), f"{100 * s['sft_accuracy']:.1f}%",
                      f"{100 * s['rl_accuracy']:.1f}%", f"{s['rl_gain_points']:+.1f}",
                      f"{100 * s['control_accuracy']:.1f}%", f"{s['control_gain_points']:+.1f}",
                      f"{s['rl_seconds']:.0f} / {s['rl_steps']}")
    console.print(table)
    verdict = "[green]pass[/]" if summary["pass"] else "[red]FAIL[/]"
    console.print(f"mean gain from GRPO {summary['mean_rl_gain_points']:+.1f} points (bar {BAR_POINTS:.0f}): "
                  f"{verdict}; more SFT for the same time {summary['mean_control_gain_points']:+.1f}")
    console.print(f"wrote {ns.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
