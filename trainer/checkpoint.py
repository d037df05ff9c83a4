"""Checkpoints that a killed trainer resumes from exactly.

A checkpoint holds the model, optimizer and scheduler state, every RNG state
(Python, NumPy, torch CPU and CUDA), and the trainer's own state (stage, step,
data cursor, anything JSON-able). It is written to ``step-NNNNNNNN.tmp/`` and
renamed into place only when complete, then ``latest`` is replaced atomically,
so a SIGKILL at any moment leaves the previous checkpoint intact. Older ones
beyond ``keep`` are removed.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch

from rlyard.files import fsync_path

logger = logging.getLogger(__name__)

_PREFIX = "step-"


def rng_state() -> dict[str, Any]:
    """Every RNG state that training touches."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint on disk."""

    path: Path
    step: int

    @property
    def trainer_state(self) -> dict[str, Any]:
        """The trainer's JSON state (stage, cursor, ...)."""
        data: dict[str, Any] = json.loads((self.path / "trainer_state.json").read_text())
        return data


def save_checkpoint(
    ckpt_dir: Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    trainer_state: dict[str, Any] | None = None,
    keep: int = 3,
) -> Checkpoint:
    """Write a checkpoint atomically and prune old ones; returns it."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"{_PREFIX}{step:08d}"
    tmp = ckpt_dir / f"{_PREFIX}{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save(model.state_dict(), tmp / "model.pt")
    blob: dict[str, Any] = {"rng": rng_state()}
    if optimizer is not None:
        blob["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        blob["scheduler"] = scheduler.state_dict()
    torch.save(blob, tmp / "training.pt")
    (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **(trainer_state or {})}, indent=2))
    for f in tmp.iterdir():
        with f.open("rb") as fh:
            os.fsync(fh.fileno())
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    latest_tmp = ckpt_dir / "latest.tmp"
    latest_tmp.write_text(final.name)
    latest_tmp.replace(ckpt_dir / "latest")
    fsync_path(ckpt_dir)
    for old in sorted(p for p in ckpt_dir.glob(f"{_PREFIX}*") if p.is_dir() and not p.name.endswith(".tmp"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    logger.info("checkpoint %s written", final)
    return Checkpoint(final, step)


def latest_checkpoint(ckpt_dir: Path) -> Checkpoint | None:
    """The newest complete checkpoint, or None (half-written ``.tmp`` ones are ignored)."""
    pointer = ckpt_dir / "latest"
    candidates: list[Path] = []
    if pointer.exists():
        candidates.append(ckpt_dir / pointer.read_text().strip())
    candidates += sorted((p for p in ckpt_dir.glob(f"{_PREFIX}*") if not p.name.endswith(".tmp")), reverse=True)
    for path in candidates:
        if (path / "trainer_state.json").exists() and (path / "model.pt").exists():
            return Checkpoint(path, int(path.name.removeprefix(_PREFIX)))
    return None


def restore_checkpoint(
    ckpt: Checkpoint,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
) -> dict[str, Any]:
    """Load model/optimizer/scheduler and RNG states; returns the trainer state."""
    model.load_state_dict(torch.load(ckpt.path / "model.pt", weights_only=True))
    blob = torch.load(ckpt.path / "training.pt", weights_only=False)
    if optimizer is not None and "optimizer" in blob:
        optimizer.load_state_dict(blob["optimizer"])
    if scheduler is not None and "scheduler" in blob:
        scheduler.load_state_dict(blob["scheduler"])
    set_rng_state(blob["rng"])
    return ckpt.trainer_state


class StopRequested:
    """Turns SIGTERM (and SIGINT) into a flag the training loop checks between steps,
    so it can write a checkpoint and exit cleanly."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
        self.event = threading.Event()
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._signals = signals

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        self.event.set()

    def __enter__(self) -> StopRequested:
        if threading.current_thread() is threading.main_thread():
            for sig in self._signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def requested(self) -> bool:
        """Whether a stop signal arrived."""
        return self.event.is_set()
