"""Does GRPO make the tiny policy better at text-to-SQL, beyond what more SFT would?

For each seed: the learning demo (``experiments.learning.run_learning``: a fresh world, tasks,
demonstrations and tiny policy from that seed; copying warm-up; SFT; GRPO with the execution
reward over the embedded SQL tool server and reward service; greedy held-out evaluation of the SFT
and the GRPO checkpoints), then the control: starting from the same SFT checkpoint, more SFT on the
same demonstrations for the wall time GRPO used, evaluated the same way.

Every checkpoint is reported on the three held-out slices decided with the world (a
in-distribution, b unseen values, c unseen templates; ``envs.local_services.questions``). The bar
(issue 20) reads slice a: the mean over seeds of GRPO's gain over its SFT start is at least 15
points, every seed gains, and GRPO beats its more-SFT control in every seed. Slices b and c are
reported and checked apart: GRPO must not fall below its SFT start by more than that start's
standard error, sqrt(p (1 - p) / n), in any seed (``slices_held``).

``python -m bench.sql_learning [--seeds 0 1 2] [--rl-seconds S] [--output F] [--runs-dir D] [--resume]``
writes ``bench/results/sql_learning.json`` (after every seed; ``--resume`` keeps the seeds it already
holds for the same configuration and runs the others).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.seeds import earlier_seeds, write_report
from envs.local_services.questions import SLICES
from experiments.learning import EvalEvent, LearningConfig, PhaseEvent, prepare_for, quick, run_learning

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "bench" / "results" / "sql_learning.json"
BAR_POINTS = 15.0
# The RL budget per seed: the probe gave its GRPO 600 s. `rlyard demo` gives it 240 s
# (LearningConfig.rl_seconds) to finish within 15 minutes; the bench measures what RL can do.
BENCH_RL_SECONDS = 600.0
# The slices that must merely hold (not fall by more than a standard error); the bar reads "a".
GUARDED_SLICES = ("b", "c")


def slice_gain_points(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Per slice, ``after``'s accuracy minus ``before``'s, in points."""
    return {name: round(100 * (after[name]["accuracy"] - before[name]["accuracy"]), 2) for name in SLICES}


def held(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Whether ``after``'s accuracy on a slice is at most one standard error of ``before``'s below it."""
    return bool(after["accuracy"] >= before["accuracy"] - before["stderr"] - 1e-9)


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
    rl_steps = next(s["steps_done"] for s in rl["stages"] if s["name"] == "grpo")
    slices = {"sft": rl["slices"]["sft"], "rl": rl["slices"]["rl"], "control": control["slices"]["control"]}
    return {
        "seed": seed,
        "heldout_tasks": rl["heldout_tasks"],
        "heldout_slices": rl["heldout_slices"],
        "sft_accuracy": rl["sft_accuracy"],
        "rl_accuracy": rl["rl_accuracy"],
        "rl_gain_points": round(100 * (rl["rl_accuracy"] - rl["sft_accuracy"]), 2),
        "control_accuracy": control["control_accuracy"],
        "control_gain_points": round(100 * (control["control_accuracy"] - rl["sft_accuracy"]), 2),
        "slices": slices,                      # per checkpoint and slice: {n, correct, accuracy, stderr}
        "rl_gain_points_by_slice": slice_gain_points(slices["sft"], slices["rl"]),
        "control_gain_points_by_slice": slice_gain_points(slices["sft"], slices["control"]),
        "slices_held": {name: held(slices["sft"][name], slices["rl"][name]) for name in GUARDED_SLICES},
        "rl_seconds": round(rl_seconds, 1),
        "rl_steps": rl_steps,
        "rl_steps_per_second": round(rl_steps / rl_seconds, 4) if rl_seconds else None,
        "control_seconds": round(float(control["stage_seconds"]["more_sft"]), 1),
        "control_steps": next(s["steps_done"] for s in control["stages"] if s["name"] == "more_sft"),
        "wall_seconds": round(time.monotonic() - tic, 1),
        "prepare_seconds": round(prepare_seconds, 1),
        "copy_warmup": rl["copy_warmup"],
        "rl_wall_seconds": rl["wall_seconds"],
        "demo_seconds": round(prepare_seconds + rl["wall_seconds"], 1),   # `rlyard demo`'s, at --rl-seconds 240
        "by_template": {"sft": rl["by_template"]["sft"], "rl": rl["by_template"]["rl"],
                        "control": control["by_template"]["control"]},
        "errors": {"sft": rl["errors"]["sft"], "rl": rl["errors"]["rl"], "control": control["errors"]["control"]},
        "runs": {"grpo": str(rl_dir), "control": str(control_dir)},
    }


def summarize(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over seeds, the verdict against the bar (slice a), and whether b and c held."""
    def mean(values: Any, digits: int) -> float:
        return round(statistics.mean(values), digits)

    gain, control = mean((s["rl_gain_points"] for s in seeds), 2), mean((s["control_gain_points"] for s in seeds), 2)
    gain_by_slice = {f"mean_{arm}_gain_points_by_slice": {
        name: mean((s[f"{arm}_gain_points_by_slice"][name] for s in seeds), 2) for name in SLICES}
        for arm in ("rl", "control")}
    bar = {"mean_gain_a": gain_by_slice["mean_rl_gain_points_by_slice"]["a"] >= BAR_POINTS,
           "every_seed_gains_a": all(s["rl_gain_points_by_slice"]["a"] > 0 for s in seeds),
           "beats_control_a_every_seed": all(
               s["slices"]["rl"]["a"]["accuracy"] > s["slices"]["control"]["a"]["accuracy"] for s in seeds)}
    return {
        **{f"mean_{key}_accuracy": mean((s[f"{key}_accuracy"] for s in seeds), 4) for key in ("sft", "rl", "control")},
        "mean_rl_gain_points": gain,
        "mean_control_gain_points": control,
        "rl_gain_over_control_points": round(gain - control, 2),
        "mean_accuracy_by_slice": {key: {name: mean((s["slices"][key][name]["accuracy"] for s in seeds), 4)
                                         for name in SLICES} for key in ("sft", "rl", "control")},
        **gain_by_slice,
        "bar_points": BAR_POINTS,
        "bar": bar,                            # the three conditions on slice a
        "pass": all(bar.values()),
        # GRPO at most one standard error of its SFT start below it, in every seed
        "slices_held": {name: all(s["slices_held"][name] for s in seeds) for name in GUARDED_SLICES},
    }


def results_table(seeds: list[dict[str, Any]]) -> Table:
    """A row per seed: each checkpoint's accuracy on slices a · b · c, the gains on a, b and c held."""
    first = seeds[0]["heldout_slices"]
    table = Table("seed", f"SFT a · b · c ({first['a']} · {first['b']} · {first['c']})", "GRPO a · b · c",
                  "more SFT a · b · c", "GRPO gain a", "control gain a", "b, c held", "RL s / steps")

    def accuracies(s: dict[str, Any], key: str) -> str:
        return " · ".join(f"{100 * s['slices'][key][name]['accuracy']:.0f}%" for name in SLICES)

    for s in seeds:
        table.add_row(str(s["seed"]), accuracies(s, "sft"), accuracies(s, "rl"), accuracies(s, "control"),
                      f"{s['rl_gain_points_by_slice']['a']:+.1f}", f"{s['control_gain_points_by_slice']['a']:+.1f}",
                      ", ".join("yes" if s["slices_held"][name] else "no" for name in GUARDED_SLICES),
                      f"{s['rl_seconds']:.0f} / {s['rl_steps']}")
    return table


def verdict_line(summary: dict[str, Any]) -> str:
    """The bar's verdict on slice a, its three conditions, and whether b and c held."""
    bar = summary["bar"]
    verdict = "[green]pass[/]" if summary["pass"] else "[red]FAIL[/]"
    held_bc = ", ".join(f"{name} {'held' if ok else 'fell'}" for name, ok in summary["slices_held"].items())
    return (f"mean gain from GRPO on slice a {summary['mean_rl_gain_points_by_slice']['a']:+.1f} points "
            f"(bar {BAR_POINTS:.0f}: {'met' if bar['mean_gain_a'] else 'missed'}; every seed gains: "
            f"{'yes' if bar['every_seed_gains_a'] else 'no'}; beats its control every seed: "
            f"{'yes' if bar['beats_control_a_every_seed'] else 'no'}): {verdict} · {held_bc} · more SFT for the "
            f"same time on a {summary['mean_control_gain_points_by_slice']['a']:+.1f}")


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
    parser.add_argument("--rl-dynamic-rounds", type=int, default=LearningConfig.rl_dynamic_rounds,
                        help="> 0: dynamic sampling, at most this many rounds of rollouts a GRPO step (default 0: off)")
    parser.add_argument("--rl-oversample", type=float, default=LearningConfig.rl_oversample,
                        help="with --rl-dynamic-rounds: questions a round draws per group still missing (default 1)")
    parser.add_argument("--rl-selection", choices=("uniform", "pass_rate"), default=LearningConfig.rl_selection,
                        help="GRPO's question selection (default uniform: the epoch shuffle in order)")
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
                         rl_temperature=ns.rl_temperature, rl_lr=ns.rl_lr, rl_dynamic_rounds=ns.rl_dynamic_rounds,
                         rl_oversample=ns.rl_oversample, rl_selection=ns.rl_selection)
    if ns.quick:
        cfg = quick(cfg)
    seeds: list[dict[str, Any]] = earlier_seeds(ns.output, cfg, ns.quick, ns.seeds) if ns.resume else []
    for s in seeds:
        console.print(f"seed {s['seed']}: kept from {ns.output} (GRPO on slice a "
                      f"{s['rl_gain_points_by_slice']['a']:+.1f} points)")

    def write(complete: bool) -> None:
        write_report(ns.output, "sql_learning", cfg, quick=ns.quick, complete=complete, seeds=seeds,
                     summary=summarize(seeds))

    for seed in ns.seeds:
        if any(s["seed"] == seed for s in seeds):
            continue
        console.print(f"[bold]seed {seed}[/]")
        seeds.append(run_seed(seed, dataclasses.replace(cfg, seed=seed), ns.runs_dir, console))
        write(complete=False)
    write(complete=True)
    summary = summarize(seeds)
    console.print(results_table(seeds))
    console.print(verdict_line(summary))
    console.print(f"wrote {ns.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
