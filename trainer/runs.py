"""Runs of the trainer service: each experiment runs in a thread of its own, and
its events are kept so that ``StreamMetrics`` can replay them and follow live ones."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rlyard.errors import AlreadyExists, ConfigError, FailedPrecondition, InvalidArgument, NotFound
from trainer.config import ExperimentConfig, parse_config

logger = logging.getLogger(__name__)

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
RunFn = Callable[..., dict[str, Any]]


@dataclass
class Run:
    """One experiment run and what it has reported so far."""

    run_id: str
    config: ExperimentConfig
    run_dir: Path
    state: str = "PENDING"
    stage: str = ""
    step: int = 0
    total_steps: int = 0
    started_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    error: str = ""
    last_checkpoint: str = ""
    latest_metrics: dict[str, float] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def record(self, event: dict[str, Any]) -> None:
        """Take an event from the runner (called on the run's thread)."""
        with self._cond:
            self.updated_at = time.time()
            if event.get("type") == "metrics":
                self.stage = str(event.get("stage", self.stage))
                self.step = int(event.get("step", self.step))
                self.latest_metrics = {k: float(v) for k, v in event.get("values", {}).items()
                                       if isinstance(v, int | float)}
            elif event.get("type") == "state":
                self.state = str(event.get("state", self.state))
                self.error = str(event.get("error", self.error) or "")
            elif event.get("type") == "checkpoint":
                self.last_checkpoint = str(event.get("path", ""))
            self.events.append({**event, "timestamp": self.updated_at, "state": self.state})
            self._cond.notify_all()

    def wait_events(self, start: int, timeout: float) -> tuple[list[dict[str, Any]], bool]:
        """Events from index ``start`` on (blocking up to ``timeout`` for new ones), and
        whether the run has ended."""
        with self._cond:
            if len(self.events) <= start and self.state not in TERMINAL:
                self._cond.wait(timeout)
            return self.events[start:], self.state in TERMINAL


class RunRegistry:
    """Starts runs on threads and answers for them."""

    def __init__(self, runs_root: Path, run_fn: RunFn | None = None) -> None:
        self.runs_root = runs_root
        self.runs: dict[str, Run] = {}
        self._run_fn = run_fn

    def _runner(self) -> RunFn:
        if self._run_fn is None:
            from trainer.runner import run_experiment

            self._run_fn = run_experiment
        return self._run_fn

    def start(self, config_yaml: str, run_id: str = "", resume: bool = False) -> Run:
        """Parse the config and start the run; INVALID_ARGUMENT on a bad config."""
        try:
            config = parse_config(yaml.safe_load(config_yaml), "config_yaml")
        except (ConfigError, yaml.YAMLError) as exc:
            raise InvalidArgument(str(exc)) from None
        run_id = run_id or f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        existing = self.runs.get(run_id)
        if existing is not None and existing.state not in TERMINAL:
            raise AlreadyExists(f"run {run_id!r} is still {existing.state}")
        run_dir = self.runs_root / run_id
        if run_dir.exists() and not resume and existing is None:
            raise AlreadyExists(f"{run_dir} exists; pass resume=true to continue it or pick another run_id")
        run = Run(run_id, config, run_dir, total_steps=sum(s.steps for s in config.stages))
        self.runs[run_id] = run
        run_fn = self._runner()

        def target() -> None:
            run.record({"type": "state", "state": "RUNNING"})
            try:
                run_fn(config, run_dir, on_event=run.record, stop=run.stop, resume=resume)
            except Exception as exc:  # the run failed; the service goes on
                logger.exception("run %s failed", run_id)
                run.record({"type": "state", "state": "FAILED", "error": f"{type(exc).__name__}: {exc}"})
                return
            if run.state not in TERMINAL:
                run.record({"type": "state", "state": "STOPPED" if run.stop.is_set() else "SUCCEEDED"})

        run.thread = threading.Thread(target=target, name=f"run-{run_id}", daemon=True)
        run.thread.start()
        return run

    def get(self, run_id: str) -> Run:
        """A run by id; NOT_FOUND otherwise."""
        run = self.runs.get(run_id)
        if run is None:
            raise NotFound(f"no run {run_id!r}; runs: {', '.join(self.runs) or '(none)'}")
        return run

    def stop(self, run_id: str, timeout: float = 60.0) -> Run:
        """Ask the run to checkpoint and stop; waits up to ``timeout`` for it."""
        run = self.get(run_id)
        if run.state in TERMINAL:
            raise FailedPrecondition(f"run {run_id!r} already ended ({run.state})")
        run.stop.set()
        if run.thread is not None:
            run.thread.join(timeout)
        return run

    async def follow(self, run_id: str, from_step: int) -> AsyncIterator[dict[str, Any]]:
        """Metric events with step >= from_step, then live ones until the run ends."""
        run = self.get(run_id)
        index = 0
        while True:
            events, ended = await asyncio.to_thread(run.wait_events, index, 0.5)
            index += len(events)
            for event in events:
                if event.get("type") == "metrics" and int(event.get("step", 0)) >= from_step:
                    yield event
                elif event.get("type") == "state" and event.get("state") in TERMINAL:
                    yield event
            if ended and not events:
                return
