"""Runs of the trainer service: each experiment runs in a thread of its own, through the
composition root (``trainer.compose``: the services, embedded or given, for its RL stages), and
its events are kept so that ``StreamMetrics`` can replay them and follow live ones."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from rlyard.errors import AlreadyExists, ConfigError, FailedPrecondition, InvalidArgument, NotFound
from trainer import compose
from trainer.config import ExperimentConfig, parse_config
from trainer.events import CheckpointEvent, MetricsEvent, RunEvent, StateEvent, StopRequest

logger = logging.getLogger(__name__)

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


@dataclass(frozen=True)
class Recorded:
    """An event as the service keeps it: when it came and the run's state then."""

    event: RunEvent
    timestamp: float
    state: str


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
    events: list[Recorded] = field(default_factory=list)
    stop: StopRequest = field(default_factory=StopRequest)
    thread: threading.Thread | None = None
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def record(self, event: RunEvent) -> None:
        """Take an event from the runner (called on the run's thread)."""
        with self._cond:
            self.updated_at = time.time()
            if isinstance(event, MetricsEvent):
                self.stage, self.step = event.stage, event.step
                self.latest_metrics = {k: float(v) for k, v in event.values.items() if isinstance(v, int | float)}
            elif isinstance(event, StateEvent):
                self.state = event.state
                self.error = event.error or self.error
            elif isinstance(event, CheckpointEvent):
                self.last_checkpoint = event.path
            self.events.append(Recorded(event, self.updated_at, self.state))
            self._cond.notify_all()

    def wait_events(self, start: int, timeout: float) -> tuple[list[Recorded], bool]:
        """Events from index ``start`` on (blocking up to ``timeout`` for new ones), and
        whether the run has ended."""
        with self._cond:
            if len(self.events) <= start and self.state not in TERMINAL:
                self._cond.wait(timeout)
            return self.events[start:], self.state in TERMINAL


class RunRegistry:
    """Starts runs on threads and answers for them."""

    def __init__(self, runs_root: Path) -> None:
        self.runs_root = runs_root
        self.runs: dict[str, Run] = {}

    def start(self, config_yaml: str, run_id: str = "", resume: bool = False) -> Run:
        """Check the config (INVALID_ARGUMENT when bad: a typo, a missing task file, an unknown
        backend or tool) and start the run."""
        try:
            config = parse_config(yaml.safe_load(config_yaml), "config_yaml")
            compose.check(config)
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
        run.thread = threading.Thread(target=self._execute, args=(run, resume), name=f"run-{run_id}", daemon=True)
        run.thread.start()
        return run

    @staticmethod
    def _execute(run: Run, resume: bool) -> None:
        """The run's thread: the services its RL stages need, then the runner."""
        from trainer.runner import run_experiment

        run.record(StateEvent(run.run_id, "RUNNING"))
        try:
            with contextlib.ExitStack() as exits:
                needs_services = any(s.kind == "rl" for s in run.config.stages)
                stack = exits.enter_context(compose.open_stack(run.config)) if needs_services else None
                run_experiment(run.config, run.run_dir, stack=stack, on_event=run.record, stop=run.stop,
                               resume=resume)
        except Exception as exc:  # the run failed; the service goes on
            logger.exception("run %s failed", run.run_id)
            if run.state not in TERMINAL:
                run.record(StateEvent(run.run_id, "FAILED", run.step, error=f"{type(exc).__name__}: {exc}"))
            return
        if run.state not in TERMINAL:
            run.record(StateEvent(run.run_id, "STOPPED" if run.stop.is_set() else "SUCCEEDED", run.step))

    def get(self, run_id: str) -> Run:
        """A run by id; NOT_FOUND otherwise."""
        run = self.runs.get(run_id)
        if run is None:
            raise NotFound(f"no run {run_id!r}; runs: {', '.join(self.runs) or '(none)'}")
        return run

    def stop(self, run_id: str, checkpoint: bool = True, timeout: float = 60.0) -> Run:
        """Ask the run to stop (writing a checkpoint first when ``checkpoint``); waits up to
        ``timeout`` for it."""
        run = self.get(run_id)
        if run.state in TERMINAL:
            raise FailedPrecondition(f"run {run_id!r} already ended ({run.state})")
        run.stop.set(checkpoint)
        if run.thread is not None:
            run.thread.join(timeout)
        return run

    def stop_all(self) -> None:
        """Ask every live run to stop with a checkpoint (the service is shutting down)."""
        for run in self.runs.values():
            if run.state not in TERMINAL:
                run.stop.set(True)

    async def follow(self, run_id: str, from_step: int) -> AsyncIterator[Recorded]:
        """Metric events with step >= from_step, then live ones, and the final state event."""
        run = self.get(run_id)
        index = 0
        while True:
            events, ended = await asyncio.to_thread(run.wait_events, index, 0.5)
            index += len(events)
            for rec in events:
                if isinstance(rec.event, MetricsEvent) and rec.event.step >= from_step:
                    yield rec
                elif isinstance(rec.event, StateEvent) and rec.event.state in TERMINAL:
                    yield rec
            if ended and not events:
                return
