"""Settings of the trainer service (environment prefix ``RLYARD_TRAINER``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlyard.settings import EnvSettings


@dataclass(frozen=True)
class TrainerSettings(EnvSettings):
    """Where runs are written."""

    runs_dir: Path = Path("runs")
