"""``rlyard train -c CONFIG``: run an experiment here, with a live view of its progress.

SFT stages need only the policy; RL stages get the rollout engine and the reward service
through ``trainer.wiring.RLServices`` (embedded unless the config names service addresses).
Everything lands in ``<output_dir>/<run_id>/``: metrics.jsonl, curves/*.png, samples.md,
report.json, checkpoints/ (``--resume`` continues from the last one).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from rlyard.errors import ConfigError
from trainer.config import ExperimentConfig, load_config

SHOWN = ("loss", "reward_mean", "accuracy", "kept", "tokens_per_s", "tool_latency_ms", "rollout_seconds", "lr")


class ProgressView:
    """The live table: stage, step, and the latest values worth watching."""

    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config
        self.total = sum(s.steps for s in config.stages)
        self.state = "STARTING"
        self.stage = ""
        self.step = 0
        self.global_step = 0
        self.values: dict[str, float] = {}
        self.started = time.monotonic()

    def update(self, event: dict[str, Any]) -> None:
        """Take an event from the runner."""
        if event.get("type") == "metrics":
            self.stage = str(event.get("stage", ""))
            self.step = int(event.get("step", 0))
            self.global_step = int(event.get("global_step", self.global_step + 1))
            self.values = {k: v for k, v in event.get("values", {}).items() if isinstance(v, int | float)}
        elif event.get("type") == "state":
            self.state = str(event.get("state", self.state))

    def render(self) -> Table:
        """The table to show now."""
        table = Table(title=f"rlyard train · {self.config.name} · {self.state}", show_header=False)
        elapsed = time.monotonic() - self.started
        table.add_row("stage", f"{self.stage or '-'}  (step {self.step})")
        table.add_row("progress", f"{self.global_step}/{self.total} steps · {elapsed:.0f}s")
        for key in SHOWN:
            if key in self.values:
                table.add_row(key, f"{self.values[key]:.4g}")
        return table


def run(ns: Any, console: Console) -> int:
    """Entry of ``rlyard train``."""
    config = load_config(ns.config)
    if not Path(config.model.path).exists():
        raise ConfigError(f"model.path {config.model.path} does not exist; build the tiny policy with "
                          f"`rlyard model init --out {config.model.path}` or point it at any HF checkpoint")
    run_id = ns.run_id or f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(config.output_dir) / run_id
    view = ProgressView(config)
    from trainer.runner import run_experiment

    with contextlib.ExitStack() as stack, Live(view.render(), console=console, refresh_per_second=4) as live:
        kwargs: dict[str, Any] = {}
        if any(s.kind == "rl" for s in config.stages):
            from trainer.wiring import RLServices

            rl = stack.enter_context(RLServices(config))
            kwargs = {"rollout_fn": rl.rollout, "score_fn": rl.score, "task_source": rl.tasks,
                      "on_policy": rl.bind_policy}

        def on_event(event: dict[str, Any]) -> None:
            view.update(event)
            live.update(view.render())

        report = run_experiment(config, run_dir, on_event=on_event, resume=ns.resume, **kwargs)
    console.print(f"{report['state']}: {run_dir}/ (report.json, metrics.jsonl, curves/, checkpoints/)")
    return 0 if report["state"] == "SUCCEEDED" else 1
