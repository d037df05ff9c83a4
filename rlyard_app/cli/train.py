"""``rlyard train -c CONFIG``: run an experiment here, with a live view of its progress.

SFT stages need only the policy; RL stages get the services through the composition root
(``trainer.compose.open_stack``: embedded unless the config names service addresses).
Everything lands in ``<output_dir>/<run_id>/``: metrics.jsonl, curves/*.png, samples.md,
report.json, checkpoints/ (a run resumes from the last one unless ``--no-resume``).
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
from trainer.events import MetricsEvent, StateEvent

SHOWN = ("loss", "reward_mean", "accuracy", "kept", "tokens_per_s", "tool_latency_ms", "rollout_seconds", "lr",
         "memory/hit_rate", "memory/failures")     # the graph memory's, when the config turns it on


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

    def update(self, event: Any) -> None:
        """Take an event from the runner."""
        if isinstance(event, MetricsEvent):
            self.stage, self.step, self.global_step = event.stage, event.step, event.global_step
            self.values = {k: v for k, v in event.values.items() if isinstance(v, int | float)}
        elif isinstance(event, StateEvent):
            self.state = event.state

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
    from trainer import compose
    from trainer.runner import run_experiment

    config = load_config(ns.config)
    if not Path(config.model.path).exists():
        raise ConfigError(f"model.path {config.model.path} does not exist; build the tiny policy with "
                          f"`rlyard model init --out {config.model.path}` or point it at any HF checkpoint")
    compose.check(config)
    run_id = ns.run_id or f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(config.output_dir) / run_id
    view = ProgressView(config)

    with contextlib.ExitStack() as exits, Live(view.render(), console=console, refresh_per_second=4) as live:
        stack = exits.enter_context(compose.open_stack(config)) if any(s.kind == "rl" for s in config.stages) else None

        def on_event(event: Any) -> None:
            view.update(event)
            live.update(view.render())

        report = run_experiment(config, run_dir, stack=stack, on_event=on_event, resume=ns.resume)
    console.print(f"{report['state']}: {run_dir}/ (report.json, metrics.jsonl, curves/, checkpoints/)")
    return 0 if report["state"] == "SUCCEEDED" else 1
