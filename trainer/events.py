"""What a run reports while it goes (typed events), how to ask it to stop, and the state a
checkpoint holds to resume it exactly."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trainer.selection import TaskDraws


@dataclass(frozen=True)
class StateEvent:
    """The run changed state: RUNNING, SUCCEEDED, STOPPED or FAILED."""

    run_id: str
    state: str
    step: int = 0
    error: str = ""
    report: str = ""                     # report.json, once the run has ended
    resumed_from: int | None = None      # RUNNING after a resume: the global step it resumed from


@dataclass(frozen=True)
class MetricsEvent:
    """One training step's metrics."""

    stage: str
    step: int                            # within the stage, 1-based
    global_step: int
    values: dict[str, float]


@dataclass(frozen=True)
class CheckpointEvent:
    """A checkpoint was written."""

    step: int                            # the global step it holds
    stage_index: int
    path: str


RunEvent = StateEvent | MetricsEvent | CheckpointEvent
# Receives run events (and, from the experiments, their own event types).
EventFn = Callable[[Any], None]


class StopRequest:
    """Asks a running experiment to stop between steps; ``checkpoint`` says whether it writes a
    checkpoint first (a run stopped without one resumes from its last periodic checkpoint)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.checkpoint = True

    def set(self, checkpoint: bool = True) -> None:
        """Ask to stop (with or without a final checkpoint)."""
        self.checkpoint = checkpoint
        self._event.set()

    def is_set(self) -> bool:
        """Whether a stop was asked for."""
        return self._event.is_set()


@dataclass
class RunState:
    """Where a run is: what a checkpoint saves (``to_json``) and a resume restores (``from_json``)."""

    stage_index: int = 0
    stage_step: int = 0                  # steps done in the current stage
    cursor: int = 0                      # the SFT data cursor of the current stage
    global_step: int = 0
    wall_seconds: float = 0.0            # the run's wall time before this process took over
    stage_seconds: float = 0.0           # training time of the current stage
    stage_done: bool = False
    stage_limit: float = 0.0             # the current stage's time limit (0: none)
    final_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    stage_steps: dict[int, int] = field(default_factory=dict)      # steps of finished stages
    stage_secs: dict[int, float] = field(default_factory=dict)     # their training seconds
    draws: TaskDraws | None = None       # an RL stage's task draws (cursor, pass-rate estimates)

    def to_json(self, wall_seconds: float) -> dict[str, Any]:
        """The checkpoint's ``trainer_state`` (JSON keys are strings)."""
        out = dataclasses.asdict(self)
        out["wall_seconds"] = wall_seconds
        out["draws"] = None if self.draws is None else self.draws.to_json()
        out["stage_steps"] = {str(k): v for k, v in self.stage_steps.items()}
        out["stage_secs"] = {str(k): v for k, v in self.stage_secs.items()}
        return out

    @classmethod
    def from_json(cls, saved: dict[str, Any], configured_limit: Callable[[int], float]) -> RunState:
        """The state a checkpoint saved; ``configured_limit(stage_index)`` fills the time limit of a
        checkpoint written before limits were saved."""
        state = cls(**{f.name: saved[f.name] for f in dataclasses.fields(cls)
                       if f.name in saved and f.name not in ("stage_steps", "stage_secs", "draws")})
        state.draws = None if saved.get("draws") is None else TaskDraws.from_json(saved["draws"])
        state.stage_steps = {int(k): int(v) for k, v in saved.get("stage_steps", {}).items()}
        state.stage_secs = {int(k): float(v) for k, v in saved.get("stage_secs", {}).items()}
        if "stage_limit" not in saved:
            state.stage_limit = configured_limit(state.stage_index)
        return state
