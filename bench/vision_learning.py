"""Does GRPO with the rotation reward alone teach the tiny vision-language policy to tell how an
unseen image was rotated? (issue 21)

Per seed (``experiments.vision_learning.run_vision_learning``): SSL4RL tasks on synthetic scenes,
a fresh tiny Qwen2-VL, a format start (SFT on the four kinds with random answers: it knows how to
answer, not what), GRPO with ``ssl_rotation`` alone on train scenes for ``--rl-seconds``, and the
start and the GRPO checkpoint evaluated greedily on held-out scenes for the four kinds (rotation,
jigsaw, position, masked patch) through the embedded reward service.

The bar (issue 21): held-out rotation accuracy from chance (25%) to at least 60% as the mean over
seeds, every seed above 45%. Jigsaw, position and masked patch are reported against their chance
levels (the policy is not trained on them).

``python -m bench.vision_learning [--seeds 0 1 2] [--rl-seconds S] [--rl-lr LR] [--lr-sweep LR ...]
[--output F] [--runs-dir D] [--resume] [--quick]`` writes ``bench/results/vision_learning.json``
(after every seed; ``--resume`` keeps the seeds it already holds for the same configuration) and the
train-reward curves of all seeds as ``vision_learning_reward.png`` beside it.
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
from experiments.vision_learning import (
    EvalEvent,
    FormatStepEvent,
    PhaseEvent,
    VisionLearningConfig,
    lr_sweep,
    plot_rewards,
    prepare,
    quick,
    run_vision_learning,
)
from reward_service.ssl.answers import TASKS

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "bench" / "results" / "vision_learning.json"
BAR_MEAN = 0.60           # mean held-out rotation accuracy over seeds
BAR_EVERY_SEED = 0.45     # every seed's held-out rotation accuracy above this


def run_seed(seed: int, cfg: VisionLearningConfig, runs_dir: Path, console: Console) -> dict[str, Any]:
    """The experiment for one seed, as the results JSON keeps it."""
    tic = time.monotonic()
    run_dir = runs_dir / f"seed{seed}"
    rewards: list[float] = []

    def log(event: Any) -> None:
        name = type(event).__name__
        if isinstance(event, PhaseEvent):
            console.print(f"  seed {seed} · {event.phase} ({time.monotonic() - tic:.0f} s)")
        elif isinstance(event, FormatStepEvent) and event.step % 50 == 0:
            console.print(f"  seed {seed} · format step {event.step}: loss {event.loss:.3f}")
        elif isinstance(event, EvalEvent):
            console.print(f"  seed {seed} · {event.model} {event.kind}: held-out accuracy {100 * event.accuracy:.1f}%")
        elif name == "MetricsEvent" and "reward_mean" in event.values:
            rewards.append(float(event.values["reward_mean"]))
            if len(rewards) % 50 == 0:
                recent = rewards[-50:]
                console.print(f"  seed {seed} · GRPO step {event.step}: train reward {statistics.mean(recent):.3f} "
                              f"(mean of the last {len(recent)}; {time.monotonic() - tic:.0f} s)")

    prep = prepare(run_dir / "work", cfg, log)
    prepare_seconds = time.monotonic() - tic
    report = run_vision_learning(run_dir, cfg, on_event=log, prepared=prep)
    if report.get("state") != "SUCCEEDED":
        raise RuntimeError(f"seed {seed}: the GRPO run ended {report.get('state')}: {report.get('error', '')}")
    return {
        "seed": seed,
        "start": report["accuracy"]["start"],       # kind → {n, correct, accuracy, stderr, malformed, chance, ...}
        "end": report["accuracy"]["end"],
        "rl_steps": report["rl_steps"],
        "rl_seconds": report["rl_seconds"],
        "rl_steps_per_second": report["rl_steps_per_second"],
        "wall_seconds": round(time.monotonic() - tic, 1),
        "prepare_seconds": round(prepare_seconds, 1),
        "format": report["format"],
        "rl_tasks": report["rl_tasks"],
        "train_rewards": report["train_rewards"],
        "run": str(run_dir),
    }


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _run_seed_quietly(seed: int, cfg: VisionLearningConfig, runs_dir: Path) -> dict[str, Any]:
    """``run_seed`` in a worker process (its progress lines go to the shared terminal)."""
    return run_seed(seed, cfg, runs_dir, Console())


def summarize(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean start and end accuracy per kind over seeds, and the verdict against the bar."""
    if not seeds:
        return {}

    def mean(key: str, kind: str) -> float:
        return round(statistics.mean(s[key][kind]["accuracy"] for s in seeds), 4)

    end_rotation = [s["end"]["rotation"]["accuracy"] for s in seeds]
    bar = {"mean_rotation_at_least": BAR_MEAN, "every_seed_above": BAR_EVERY_SEED,
           "mean_rotation_met": statistics.mean(end_rotation) >= BAR_MEAN,
           "every_seed_met": all(a > BAR_EVERY_SEED for a in end_rotation)}
    return {
        "seeds": len(seeds),
        "mean_start_accuracy": {kind: mean("start", kind) for kind in TASKS},
        "mean_end_accuracy": {kind: mean("end", kind) for kind in TASKS},
        "chance": {kind: seeds[0]["start"][kind]["chance"] for kind in TASKS},
        "mean_rl_steps": round(statistics.mean(s["rl_steps"] for s in seeds), 1),
        "mean_rl_steps_per_second": round(statistics.mean(s["rl_steps_per_second"] or 0.0 for s in seeds), 4),
        "mean_wall_seconds": round(statistics.mean(s["wall_seconds"] for s in seeds), 1),
        "bar": bar,
        "pass": bar["mean_rotation_met"] and bar["every_seed_met"],
    }


def results_table(seeds: list[dict[str, Any]]) -> Table:
    """A row per seed: start → end accuracy per kind (chance in the header), steps, seconds."""
    chance = seeds[0]["start"]
    table = Table("seed", *(f"{kind} (chance {100 * chance[kind]['chance']:.0f}%)" for kind in TASKS),
                  "GRPO steps / s", "wall s")
    for s in seeds:
        cells = [f"{100 * s['start'][k]['accuracy']:.0f}% → {100 * s['end'][k]['accuracy']:.0f}%" for k in TASKS]
        table.add_row(str(s["seed"]), *cells, f"{s['rl_steps']} / {s['rl_seconds']:.0f}", f"{s['wall_seconds']:.0f}")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rl-seconds", type=float, default=VisionLearningConfig.rl_seconds,
                        help=f"GRPO training seconds per seed (default {VisionLearningConfig.rl_seconds:.0f})")
    parser.add_argument("--rl-lr", type=float, default=VisionLearningConfig.rl_lr,
                        help=f"GRPO's learning rate (default {VisionLearningConfig.rl_lr:g}; --lr-sweep picks one)")
    parser.add_argument("--rl-temperature", type=float, default=VisionLearningConfig.rl_temperature)
    parser.add_argument("--prompts-per-step", type=int, default=VisionLearningConfig.prompts_per_step)
    parser.add_argument("--format-steps", type=int, default=VisionLearningConfig.format_steps)
    parser.add_argument("--lr-sweep", type=float, nargs="+", default=None, metavar="LR",
                        help="first train GRPO with each rate for --sweep-seconds on the first seed and keep the "
                             "one with the best greedy accuracy on unseen *train-split* scenes")
    parser.add_argument("--sweep-seconds", type=float, default=180.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per seed (default 1)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="seeds run at once, each in its own process (default 1: one after another)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "bench-vision-learning")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke configuration (seconds, not a result)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the seeds that --output already holds for this configuration; run the rest")
    ns = parser.parse_args(argv)
    import torch

    torch.set_num_threads(ns.threads)
    console = Console()
    cfg = VisionLearningConfig(rl_seconds=ns.rl_seconds, rl_lr=ns.rl_lr, rl_temperature=ns.rl_temperature,
                               prompts_per_step=ns.prompts_per_step, format_steps=ns.format_steps)
    if ns.quick:
        cfg = quick(cfg)
    sweep: dict[str, Any] | None = None
    if ns.lr_sweep:
        console.print(f"[bold]learning-rate sweep[/] {', '.join(f'{lr:g}' for lr in ns.lr_sweep)} "
                      f"({ns.sweep_seconds:.0f} s each, seed {ns.seeds[0]}, train split only)")
        sweep_cfg = dataclasses.replace(cfg, seed=ns.seeds[0])
        sweep = lr_sweep(ns.runs_dir / "lr-sweep", sweep_cfg, ns.lr_sweep, seconds=ns.sweep_seconds,
                         on_event=lambda e: console.print(f"  {e.phase}") if isinstance(e, PhaseEvent) else None)
        cfg = dataclasses.replace(cfg, rl_lr=sweep["best_lr"])
        console.print(f"  best learning rate: {sweep['best_lr']:g}")
    seeds: list[dict[str, Any]] = earlier_seeds(ns.output, cfg, ns.quick, ns.seeds) if ns.resume else []
    for s in seeds:
        rotation = 100 * s["end"]["rotation"]["accuracy"]
        console.print(f"seed {s['seed']}: kept from {ns.output} (rotation {rotation:.0f}%)")
    figure = ns.output.with_name(ns.output.stem + "_reward.png")

    def write(complete: bool) -> None:
        if seeds:
            plot_rewards({f"seed {s['seed']}": s["train_rewards"] for s in seeds}, figure)
        write_report(ns.output, "vision_learning", cfg, quick=ns.quick, complete=complete, seeds=seeds,
                     summary=summarize(seeds), machine={"torch_threads": ns.threads, "jobs": ns.jobs},
                     extra={"lr_sweep": sweep, "figure": str(figure) if seeds else None})

    todo = [seed for seed in ns.seeds if not any(s["seed"] == seed for s in seeds)]
    if ns.jobs > 1 and len(todo) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(min(ns.jobs, len(todo)), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_worker, initargs=(ns.threads,)) as pool:
            futures = [pool.submit(_run_seed_quietly, seed, dataclasses.replace(cfg, seed=seed), ns.runs_dir)
                       for seed in todo]
            for future in as_completed(futures):
                seeds.append(future.result())
                seeds.sort(key=lambda s: ns.seeds.index(s["seed"]))
                write(complete=False)
    else:
        for seed in todo:
            console.print(f"[bold]seed {seed}[/]")
            seeds.append(run_seed(seed, dataclasses.replace(cfg, seed=seed), ns.runs_dir, console))
            write(complete=False)
    write(complete=True)
    summary = summarize(seeds)
    console.print(results_table(seeds))
    verdict = "[green]pass[/]" if summary["pass"] else "[red]FAIL[/]"
    console.print(f"held-out rotation: mean {100 * summary['mean_end_accuracy']['rotation']:.1f}% "
                  f"(bar {100 * BAR_MEAN:.0f}%, every seed > {100 * BAR_EVERY_SEED:.0f}%): {verdict}")
    console.print(f"wrote {ns.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
