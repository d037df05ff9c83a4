"""``rlyard demo``: the learning demo with a live view (see ``experiments.learning``).

Prepare the world and the tiny policy, SFT on demonstrations, GRPO on the train questions with
the SQL tool and the reward service embedded, evaluate held-out accuracy before and after RL on
each of the three held-out slices.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table


class DemoView:
    """One progress bar per phase; RL shows its time budget, the others their steps."""

    def __init__(self, progress: Progress, sft_steps: int, copy_steps: int, rl_seconds: float, rl_steps: int) -> None:
        self.progress = progress
        self.rl_seconds = rl_seconds
        self.bars: dict[str, TaskID] = {
            "prepare": progress.add_task("prepare world, tasks, demos, policy", total=1),
            "copy": progress.add_task("policy copy warm-up", total=copy_steps),
            "sft": progress.add_task("SFT on demonstrations", total=sft_steps),
            "grpo": progress.add_task("GRPO (time budget, s)" if rl_seconds else "GRPO (steps)",
                                      total=rl_seconds or rl_steps),
            "eval": progress.add_task("held-out evaluation", total=2),
        }
        self.rl_started: float | None = None

    def __call__(self, event: Any) -> None:
        from experiments.learning import BudgetEvent, CopyEvent, EvalEvent, PhaseEvent
        from trainer.events import MetricsEvent

        if isinstance(event, PhaseEvent) and event.phase == "train":
            self.progress.update(self.bars["prepare"], completed=1)
            copy = self.progress.tasks[self.bars["copy"]] if self.bars["copy"] in self.progress.task_ids else None
            if copy is not None and copy.completed:   # the warm-up ends early once it copies
                self.progress.update(self.bars["copy"], total=copy.completed)
        elif isinstance(event, BudgetEvent) and event.seconds < event.configured:
            self.rl_seconds = float(event.seconds)
            self.progress.update(self.bars["grpo"], total=self.rl_seconds,
                                 description=f"GRPO (time budget, s: {self.rl_seconds:.0f} left of the run's budget)")
        elif isinstance(event, CopyEvent):
            self.progress.update(self.bars["copy"], completed=event.step,
                                 description=f"policy copy warm-up (ends once it copies) · loss {event.loss:.3f}")
        elif isinstance(event, MetricsEvent):
            values = event.values
            if event.stage == "grpo":
                if self.rl_started is None:
                    self.rl_started = time.monotonic() - float(values.get("step_seconds", 0.0))
                done = time.monotonic() - self.rl_started
                reward = values.get("reward_mean")       # missing when every trajectory failed
                text = (f"GRPO step {event.step} · reward {'n/a' if reward is None else f'{reward:.2f}'} · "
                        f"kept {values.get('kept', 0):.0f}")
                self.progress.update(self.bars["grpo"], description=text,
                                     completed=min(done, self.rl_seconds) if self.rl_seconds else event.step)
            else:
                self.progress.update(self.bars["sft"], completed=event.step,
                                     description=f"SFT · loss {values.get('loss', 0.0):.3f}")
        elif isinstance(event, EvalEvent) and event.state == "done":
            self.progress.advance(self.bars["eval"])
            self.progress.update(self.bars["eval"], description=f"held-out evaluation · {event.model} "
                                                               f"{100 * event.accuracy:.1f}%")
        elif isinstance(event, PhaseEvent) and event.phase == "evaluate" and self.rl_seconds:
            self.progress.update(self.bars["grpo"], completed=self.rl_seconds)


def run(ns: Any, console: Console) -> int:
    """Entry of ``rlyard demo``."""
    from experiments.learning import LearningConfig, quick, run_learning
    from experiments.sql_learning import StaleWorldError

    if ns.budget_minutes < 0:
        console.print(f"[red]--budget-minutes must be >= 0 (0 = none); got {ns.budget_minutes}[/]")
        return 2
    given = {"rl_seconds": ns.rl_seconds, "sft_steps": ns.sft_steps, "copy_steps": ns.copy_steps,
             "budget_seconds": 60.0 * ns.budget_minutes}
    cfg = LearningConfig(seed=ns.seed, **{k: v for k, v in given.items() if v is not None})
    if ns.quick:
        cfg = quick(cfg)
    run_id = ns.run_id or f"learn-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(ns.output_dir) / run_id
    if ns.quick:
        length = "a smoke run of about a minute"
    elif cfg.budget_seconds:
        length = (f"a budget of {cfg.budget_seconds / 60:g} minutes: GRPO gets what is left of it after SFT, "
                  f"up to {cfg.rl_seconds:.0f} s")
    else:
        length = f"GRPO {cfg.rl_seconds:.0f} s, no overall budget"
    console.print(f"[bold]rlyard demo[/] → {run_dir}/  (seed {cfg.seed}; copy warm-up up to {cfg.copy_steps} "
                  f"steps, SFT {cfg.sft_steps} steps, then GRPO; {length})")
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f}"),
               TimeElapsedColumn())
    try:
        with Progress(*columns, console=console, refresh_per_second=4) as progress:
            view = DemoView(progress, cfg.sft_steps, cfg.copy_steps, cfg.rl_seconds, cfg.rl_steps)
            report = run_learning(run_dir, cfg, on_event=view)
    except StaleWorldError as err:
        console.print(f"[red]{err}[/]")
        return 2
    if report.get("state") != "SUCCEEDED":
        console.print(f"[red]{report.get('state')}[/]: {report.get('error', '')} (rerun with --run-id {run_id} "
                      "to resume from the last checkpoint)")
        return 1
    console.print(results_table(report))
    console.print(eval_line(report))
    console.print(f"{gain_line(report)} · wall {report['wall_seconds']:.0f} s · "
                  f"{run_dir}/report.json, curves/, samples.md, eval_*.json")
    return 0


SLICE_NAMES = {"a": "in-distribution", "b": "unseen values", "c": "unseen templates"}
CHECKPOINTS = {"sft": "after SFT", "rl": "after GRPO", "control": "after more SFT"}


def results_table(report: dict[str, Any]) -> Table:
    """A row per evaluated checkpoint, a column per held-out slice (its count in the header): accuracy
    ± its standard error; then all slices together."""
    table = Table(title=f"held-out execution accuracy ({report['heldout_tasks']} questions, greedy; "
                        "± standard error)")
    counts = report["heldout_slices"]
    table.add_column("checkpoint")
    for name, label in SLICE_NAMES.items():
        table.add_column(f"{name} ({counts[name]})\n{label}", justify="right")
    table.add_column(f"all ({report['heldout_tasks']})", justify="right")
    for key in _checkpoints(report):
        slices = report["slices"][key]
        table.add_row(CHECKPOINTS[key], *(_percent(slices[name]) for name in SLICE_NAMES),
                      f"{100 * report['eval'][key]['execution_accuracy']:.1f}%")
    return table


def eval_line(report: dict[str, Any]) -> str:
    """Tool calls per task, format errors and truncations of each checkpoint, in the table's order."""
    keys = _checkpoints(report)

    def each(field: str, fmt: str) -> str:
        return " / ".join(format(report["eval"][key][field], fmt) for key in keys)

    return (f"tool calls per task {each('mean_tool_calls', '.2f')} · format errors {each('format_errors', 'd')} · "
            f"truncated {each('truncated', 'd')} ({' / '.join(CHECKPOINTS[key] for key in keys)})")


def gain_line(report: dict[str, Any]) -> str:
    """The run's verdict: the gain on slice a (what the bench's bar counts), then b, c and all."""
    gains = report["slice_gain"]
    rest = " · ".join(f"{name} {_points(gains[name])}" for name in ("b", "c"))
    return (f"gain from RL on slice a (in-distribution): {_points(gains['a'])} points · {rest} · "
            f"all {_points(report['gain'])}")


def _checkpoints(report: dict[str, Any]) -> list[str]:
    return [key for key in CHECKPOINTS if key in report["slices"]]


def _percent(entry: dict[str, Any]) -> str:
    if entry["accuracy"] is None:
        return "-"
    return f"{100 * entry['accuracy']:.1f}% ±{100 * entry['stderr']:.1f}"


def _points(gain: float | None) -> str:
    return "-" if gain is None else f"{100 * gain:+.1f}"
