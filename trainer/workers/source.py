"""The trainer's side of the workers: submit group jobs, take finished groups as they come.

    source = WorkerRollouts(WorkerSettings.from_env("RLYARD_WORKERS"), max_staleness=2, group_timeout_s=600)
    source.submit(job)                                  # GroupJob; its key is the Celery task id
    for group in source.wait(current_version=7, count=4):
        if group.kept: batch += group.trajectories

Every submitted key ends as exactly one ``FinishedGroup``: ``ok`` (kept), ``stale`` (sampled more
than ``max_staleness`` weight versions behind the trainer at consumption: dropped), ``failed``
(the job raised on the worker: its error is kept) or ``timed_out`` (no result within
``group_timeout_s``: revoked and masked). A group whose worker died is redelivered by the broker
and redone by another worker (``attempt`` > 1, counted as ``redone``); a key is taken once, so a
group that ran twice is counted once. Finished groups are polled with one ``MGET`` per poll.
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
from trainer.workers.settings import WorkerSettings
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
        self._pending: dict[str, tuple[GroupJob, float]] = {}
        self.counts: Counter[str] = Counter()
        self._check(self.settings.broker_url, "broker")
        self._results = self._check(self.settings.backend_url, "result backend")

    def _check(self, url: str, what: str) -> redis.Redis:
        client = redis.Redis.from_url(url, socket_connect_timeout=self.settings.connect_timeout_s,
                                      socket_timeout=self.settings.connect_timeout_s)
        try:
            client.ping()
        except redis.RedisError as exc:
            raise WorkersUnavailable(f"the workers' {what} at {url} does not answer ({exc}); start redis-server "
                                     "there or point RLYARD_WORKERS_BROKER_URL / _RESULT_URL at one") from None
        return client

    @property
    def pending(self) -> int:
        """Groups submitted and not finished yet."""
        return len(self._pending)

    def submit(self, job: GroupJob) -> None:
        """Queue ``job`` for the workers; its key must not be pending already."""
        if job.key in self._pending:
            raise ValueError(f"group {job.key} is already pending; every group needs its own key")
        try:
            self.app.send_task(GROUP_TASK, args=[job.to_json()], task_id=job.key, queue=self.settings.queue)
        except Exception as exc:   # kombu's OperationalError and redis errors after the publish retries
            raise WorkersUnavailable(f"could not queue group {job.key} on the broker at {self.settings.broker_url}: "
                                     f"{type(exc).__name__}: {exc}") from exc
        self._pending[job.key] = (job, self.clock())
        self.counts["submitted"] += 1

    def poll(self, current_version: int) -> list[FinishedGroup]:
        """The groups that finished since the last poll (no waiting), judged at ``current_version``."""
        if not self._pending:
            return []
        keys = list(self._pending)
        backend = self.app.backend
        try:
            raw = self._results.mget([backend.get_key_for_task(k) for k in keys])
        except redis.RedisError as exc:
            raise WorkersUnavailable(f"the workers' result backend at {self.settings.backend_url} failed: "
                                     f"{exc}") from None
        now = self.clock()
        out: list[FinishedGroup] = []
        for key, value in zip(keys, raw, strict=True):
            job, submitted = self._pending[key]
            if value is not None:
                meta = backend.decode_result(value)
                if meta["status"] == "SUCCESS":
                    out.append(self._finish(key, job, submitted, now, meta["result"], current_version))
                elif meta["status"] in ("FAILURE", "REVOKED"):
                    out.append(self._close(key, job, submitted, now, "failed", _error_text(meta)))
            elif now - submitted > self.group_timeout_s:
                self.app.control.revoke(key)
                out.append(self._close(key, job, submitted, now, "timed_out",
                                       f"no result within group_timeout_s = {self.group_timeout_s:g} s"))
        return out

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

    def _finish(self, key: str, job: GroupJob, submitted: float, now: float, payload: Any,
                current_version: int) -> FinishedGroup:
        try:
            result = GroupResult.from_json(payload, job.task)
        except WireError as exc:
            return self._close(key, job, submitted, now, "failed", str(exc))
        verdict = judge_staleness(result.weight_versions, current_version, self.max_staleness)
        outcome = "ok" if verdict.keep else "stale"
        group = self._close(key, job, submitted, now, outcome, "")
        group.trajectories = result.trajectories if verdict.keep else []
        group.versions_behind, group.attempt, group.worker = verdict.versions_behind, result.attempt, result.worker
        group.rollout_s = result.rollout_seconds
        if result.attempt > 1:
            self.counts["redone"] += 1
        if not verdict.keep:
            logger.info("group %s dropped: sampled %d weight versions behind (max_staleness = %d)", key,
                        verdict.versions_behind, self.max_staleness)
        return group

    def _close(self, key: str, job: GroupJob, submitted: float, now: float, outcome: str,
               error: str) -> FinishedGroup:
        del self._pending[key]
        self.counts[outcome] += 1
        if error:
            logger.warning("group %s %s: %s", key, outcome, error)
        try:   # the key is taken: a later attempt's result is never read again
            self._results.delete(self.app.backend.get_key_for_task(key), ATTEMPTS_PREFIX + key)
        except redis.RedisError:
            logger.debug("could not delete the result of group %s", key, exc_info=True)
        return FinishedGroup(key=key, job=job, outcome=outcome, error=error, round_trip_s=now - submitted)

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
        self._results.close()
        self.app.close()


def _error_text(meta: dict[str, Any]) -> str:
    result = meta.get("result")
    if isinstance(result, BaseException):
        return f"{type(result).__name__}: {result}"
    if isinstance(result, dict):   # Celery's JSON form of an exception
        return f"{result.get('exc_type', 'Error')}: {result.get('exc_message', '')}"
    return str(result)
