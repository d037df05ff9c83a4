"""The trainer's side of the workers: submit group jobs, take finished groups as they come.

    source = WorkerRollouts(WorkerSettings.from_env("RLYARD_WORKERS"), max_staleness=2, group_timeout_s=600)
    source.submit(job)                                  # GroupJob; its key is the Celery task id
    for group in source.wait(current_version=7, count=4):
        if group.kept: batch += group.trajectories
    groups = source.take([job.key], current_version=8)  # exactly these keys, once they finished

Every submitted key ends as exactly one ``FinishedGroup``: ``ok`` (kept), ``stale`` (sampled more
than ``max_staleness`` weight versions behind the trainer at consumption: dropped), ``failed``
(the job raised on the worker: its error is kept) or ``timed_out`` (no result within
``group_timeout_s``: revoked and masked). A group whose worker died is redelivered by the broker
and redone by another worker (``attempt`` > 1, counted as ``redone``); a key is taken once, so a
group that ran twice is counted once. Finished groups are polled with one ``MGET`` per poll and
judged when taken: a pipelined trainer takes a step's groups after other steps' groups finished.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from trainer.types import RolloutTrajectory
from trainer.workers.app import ATTEMPTS_PREFIX, GROUP_TASK, make_app
from trainer.workers.settings import WorkerSettings, masked
from trainer.workers.staleness import judge_staleness
from trainer.workers.wire import GroupJob, GroupResult, WireError

logger = logging.getLogger(__name__)

OUTCOMES = ("ok", "stale", "failed", "timed_out")


class WorkersUnavailable(RuntimeError):
    """The broker or result backend does not answer."""


@dataclass
class FinishedGroup:
    """One submitted group, finished one way or another (see the module docstring)."""

    key: str
    job: GroupJob
    outcome: str
    trajectories: list[RolloutTrajectory] = field(default_factory=list)
    versions_behind: int = 0
    attempt: int = 1
    worker: str = ""
    error: str = ""
    round_trip_s: float = 0.0
    rollout_s: float = 0.0

    @property
    def kept(self) -> bool:
        """Whether the update may use it."""
        return self.outcome == "ok"


@dataclass
class _Finished:
    """A group whose result came back (``ok``: judged when taken), failed or timed out."""

    job: GroupJob
    submitted: float
    finished: float
    outcome: str
    payload: Any = None
    error: str = ""


class WorkerRollouts:
    """Submits group jobs to the Celery workers and yields them as they finish."""

    def __init__(self, settings: WorkerSettings, *, max_staleness: int = 1, group_timeout_s: float = 600.0,
                 poll_s: float = 0.02, clock: Callable[[], float] = time.monotonic) -> None:
        if max_staleness < 0:
            raise ValueError(f"max_staleness={max_staleness}: use >= 0 (0: on-policy groups only)")
        if group_timeout_s <= 0:
            raise ValueError(f"group_timeout_s={group_timeout_s}: must be > 0 seconds")
        self.settings = settings
        self.max_staleness = max_staleness
        self.group_timeout_s = group_timeout_s
        self.poll_s = poll_s
        self.clock = clock
        self.app = make_app(settings)
        self._pending: dict[str, tuple[GroupJob, float]] = {}   # submitted, no result yet
        self._ready: dict[str, _Finished] = {}                   # finished, not taken yet
        self.counts: Counter[str] = Counter()
        self._check(self.settings.broker_url, "broker")
        self._results = self._check(self.settings.backend_url, "result backend")

    def _check(self, url: str, what: str) -> redis.Redis:
        client = redis.Redis.from_url(url, socket_connect_timeout=self.settings.connect_timeout_s,
                                      socket_timeout=self.settings.connect_timeout_s)
        try:
            client.ping()
        except redis.RedisError as exc:
            raise WorkersUnavailable(f"the workers' {what} at {masked(url)} does not answer ({exc}); start "
                                     "redis-server there or point RLYARD_WORKERS_BROKER_URL / _RESULT_URL at "
                                     "one") from None
        return client

    @property
    def pending(self) -> int:
        """Groups submitted and not taken yet (running, queued, or finished and waiting for ``take``)."""
        return len(self._pending) + len(self._ready)

    def submit(self, job: GroupJob) -> None:
        """Queue ``job`` for the workers; its key must not be pending already."""
        if job.key in self._pending or job.key in self._ready:
            raise ValueError(f"group {job.key} is already pending; every group needs its own key")
        try:
            self.app.send_task(GROUP_TASK, args=[job.to_json()], task_id=job.key, queue=self.settings.queue)
        except Exception as exc:   # kombu's OperationalError and redis errors after the publish retries
            raise WorkersUnavailable(f"could not queue group {job.key} on the broker at "
                                     f"{masked(self.settings.broker_url)}: "
                                     f"{type(exc).__name__}: {exc}") from exc
        self._pending[job.key] = (job, self.clock())
        self.counts["submitted"] += 1

    def poll(self, current_version: int) -> list[FinishedGroup]:
        """The groups that finished since the last poll (no waiting), judged at ``current_version``."""
        self._collect()
        return [self._take(key, current_version) for key in list(self._ready)]

    def wait(self, current_version: int | Callable[[], int], count: int | None = None,
             timeout: float | None = None) -> list[FinishedGroup]:
        """Poll until ``count`` groups finished (default: every pending one) or ``timeout`` passed;
        ``current_version`` may be a callable read at each poll (the trainer's version moves on)."""
        want = self.pending if count is None else min(count, self.pending)
        deadline = None if timeout is None else self.clock() + timeout
        out: list[FinishedGroup] = []
        while len(out) < want:
            version = current_version() if callable(current_version) else current_version
            out += self.poll(version)
            if len(out) >= want or (deadline is not None and self.clock() >= deadline):
                break
            time.sleep(self.poll_s)
        return out

    def take(self, keys: list[str], current_version: int) -> list[FinishedGroup]:
        """Wait until each of ``keys`` has finished (each within ``group_timeout_s`` of its
        submission, or ``timed_out``) and take them, in that order, judged at ``current_version``:
        the trainer's version when it consumes them, which is what their staleness is counted
        from. Groups of other keys that finish meanwhile wait for their own ``take``."""
        unknown = [k for k in keys if k not in self._pending and k not in self._ready]
        if unknown:
            raise ValueError(f"group(s) {unknown[:3]} were never submitted here, or were taken already")
        while True:
            self._collect()
            if all(k in self._ready for k in keys):
                return [self._take(k, current_version) for k in keys]
            time.sleep(self.poll_s)

    def _collect(self) -> None:
        """Move the pending groups whose result came (or whose time ran out) to the finished ones;
        one ``MGET`` for all of them. A finished key's result is deleted from the backend at once:
        a later attempt's result under the same key is never read."""
        if not self._pending:
            return
        keys = list(self._pending)
        backend = self.app.backend
        try:
            raw = self._results.mget([backend.get_key_for_task(k) for k in keys])
        except redis.RedisError as exc:
            raise WorkersUnavailable(f"the workers' result backend at {masked(self.settings.backend_url)} failed: "
                                     f"{exc}") from None
        now = self.clock()
        for key, value in zip(keys, raw, strict=True):
            job, submitted = self._pending[key]
            done: _Finished | None = None
            if value is not None:
                meta = backend.decode_result(value)
                if meta["status"] == "SUCCESS":
                    done = _Finished(job, submitted, now, "ok", payload=meta["result"])
                elif meta["status"] in ("FAILURE", "REVOKED"):
                    done = _Finished(job, submitted, now, "failed", error=_error_text(meta))
            elif now - submitted > self.group_timeout_s:
                self.app.control.revoke(key)
                done = _Finished(job, submitted, now, "timed_out",
                                 error=f"no result within group_timeout_s = {self.group_timeout_s:g} s")
            if done is None:
                continue
            del self._pending[key]
            self._ready[key] = done
            try:
                self._results.delete(backend.get_key_for_task(key), ATTEMPTS_PREFIX + key)
            except redis.RedisError:
                logger.debug("could not delete the result of group %s", key, exc_info=True)

    def _take(self, key: str, current_version: int) -> FinishedGroup:
        """The finished group of ``key``, its result judged at ``current_version`` and counted."""
        done = self._ready.pop(key)
        group = FinishedGroup(key=key, job=done.job, outcome=done.outcome, error=done.error,
                              round_trip_s=done.finished - done.submitted)
        if done.outcome == "ok":
            try:
                result = GroupResult.from_json(done.payload, done.job.task)
            except WireError as exc:
                group.outcome, group.error = "failed", str(exc)
            else:
                verdict = judge_staleness(result.weight_versions, current_version, self.max_staleness)
                group.outcome = "ok" if verdict.keep else "stale"
                group.trajectories = result.trajectories if verdict.keep else []
                group.versions_behind, group.attempt, group.worker = (verdict.versions_behind, result.attempt,
                                                                      result.worker)
                group.rollout_s = result.rollout_seconds
                if result.attempt > 1:
                    self.counts["redone"] += 1
                if not verdict.keep:
                    logger.info("group %s dropped: sampled %d weight versions behind (max_staleness = %d)", key,
                                verdict.versions_behind, self.max_staleness)
        self.counts[group.outcome] += 1
        if group.error:
            logger.warning("group %s %s: %s", key, group.outcome, group.error)
        return group

    def metrics(self) -> dict[str, float]:
        """``workers/<count>``: submitted, ok, stale, failed, timed_out, redone and pending."""
        out = {f"workers/{name}": float(self.counts[name]) for name in ("submitted", *OUTCOMES, "redone")}
        out["workers/pending"] = float(self.pending)
        return out

    def close(self) -> None:
        """Revoke what is still pending and close the connections."""
        try:
            for key in list(self._pending):
                self.app.control.revoke(key)
        except Exception as exc:   # a broker that is gone: nothing to revoke on it
            logger.warning("could not revoke %d pending group(s): %s", len(self._pending), exc)
        self._pending.clear()
        self._ready.clear()
        self._results.close()
        self.app.close()


def _error_text(meta: dict[str, Any]) -> str:
    result = meta.get("result")
    if isinstance(result, BaseException):
        return f"{type(result).__name__}: {result}"
    if isinstance(result, dict):   # Celery's JSON form of an exception
        return f"{result.get('exc_type', 'Error')}: {result.get('exc_message', '')}"
    return str(result)
