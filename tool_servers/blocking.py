"""Blocking tool work of a ``CallTools`` stream, handed to the tool pool a burst at a time.

In a ``batch_context`` (a ``CallTools`` stream runs the calls it starts in one),
``ToolContext.run_blocking`` queues its work instead of submitting it: what the calls of one
event-loop turn queue goes to the pool as one job (or joins the job still draining), which runs it
in order and wakes the loop once, when its queue is empty: the results of a burst come back
together, not one by one while the loop is still busy with the others. A call that takes long must
not hold up the calls queued behind it: while work waits past ``HELPER_DELAY_S``, another pool
thread joins in, up to the pool's size, and a burst that comes while every job is stuck in such a
call gets a job of its own at once; nor the results that finished before it: every
``HELPER_DELAY_S`` the loop takes what has finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

HELPER_DELAY_S = 0.002   # a burst of cheap calls drains well within this; a slow one gets a helper

_CURRENT: contextvars.ContextVar[BlockingBatch | None] = contextvars.ContextVar("tool_blocking_batch", default=None)


class BlockingBatch:
    """Runs blocking functions for one event loop on a pool, a queue drained by few jobs."""

    def __init__(self, pool: ThreadPoolExecutor, threads: int, loop: asyncio.AbstractEventLoop, *,
                 helper_delay_s: float = HELPER_DELAY_S) -> None:
        self.pool = pool
        self.threads = max(1, threads)
        self.loop = loop
        self.helper_delay_s = helper_delay_s
        self._lock = threading.Lock()
        self._queue: deque[tuple[asyncio.Future[Any], Callable[..., Any], tuple[Any, ...]]] = deque()
        self._finished: list[tuple[asyncio.Future[Any], bool, Any]] = []
        self._wake_pending = False
        self._flush_pending = False
        self._helper: asyncio.TimerHandle | None = None
        self._draining = 0
        self._started: dict[int, float] = {}   # draining thread -> when the work it runs now started

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> asyncio.Future[Any]:
        """Queue ``fn(*args)``; the future gets its result or exception. Event-loop thread only."""
        future = self.loop.create_future()
        with self._lock:
            self._queue.append((future, fn, args))
        if not self._flush_pending:
            self._flush_pending = True
            self.loop.call_soon(self._flush)   # after the other calls of this turn have queued theirs
        return future

    def _flush(self) -> None:
        self._flush_pending = False
        self._start_drain(unless_moving=True)     # a job still moving through its queue takes this burst
        if self._helper is None:
            self._helper = self.loop.call_later(self.helper_delay_s, self._help)

    def _start_drain(self, *, unless_moving: bool = False) -> None:
        with self._lock:
            if not self._queue or self._draining >= self.threads:
                return
            if unless_moving:
                # moving: between two pieces of work, or in one begun less than the helper delay ago
                since = time.monotonic() - self.helper_delay_s
                stuck = sum(1 for started in self._started.values() if started < since)
                if self._draining > stuck:
                    return
            self._draining += 1
        try:
            job = self.pool.submit(self._drain)
        except RuntimeError as exc:       # the pool is shut down: the server is stopping
            self._fail_queued(exc)
            return
        job.add_done_callback(self._job_done)

    def _job_done(self, job: Future[None]) -> None:
        if job.cancelled():               # dropped from the pool's queue by a shutdown
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._fail_queued, RuntimeError("the tool pool was shut down"))

    def _fail_queued(self, exc: BaseException) -> None:
        with self._lock:
            self._draining -= 1
            failed, self._queue = list(self._queue), deque()
        for future, _, _ in failed:
            if not future.done():
                future.set_exception(exc)

    def _help(self) -> None:
        """Every ``helper_delay_s`` while work waits or runs: hand over the results that finished
        (a job wakes the loop only when its queue is empty), and start a helper job for work that
        waits behind a stuck one."""
        self._helper = None
        with self._lock:
            waiting = bool(self._queue)
            busy = waiting or self._draining > 0
            finished = bool(self._finished)
        if finished:
            self._deliver()
        if waiting:
            self._start_drain()
        if busy:
            self._helper = self.loop.call_later(self.helper_delay_s, self._help)

    def _drain(self) -> None:
        """In a pool thread: run queued work until none is left."""
        me = threading.get_ident()
        while True:
            with self._lock:
                self._started.pop(me, None)
                if not self._queue:
                    self._draining -= 1
                    return
                future, fn, args = self._queue.popleft()
                self._started[me] = time.monotonic()
            if future.cancelled():          # its caller is gone (read across threads: at worst it runs anyway)
                continue
            try:
                outcome: tuple[asyncio.Future[Any], bool, Any] = (future, True, fn(*args))
            except BaseException as exc:  # handed to the caller, as run_in_executor does
                outcome = (future, False, exc)
            with self._lock:
                self._started.pop(me, None)
                self._finished.append(outcome)
                # the loop hears once the burst is done; the helper timer hands over what finished
                # before a slow piece of work
                wake = not self._wake_pending and not self._queue
                if wake:
                    self._wake_pending = True
            if wake:
                with contextlib.suppress(RuntimeError):   # the loop is closed: nobody waits any more
                    self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            finished, self._finished = self._finished, []
            self._wake_pending = False
        for future, ok, value in finished:
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)


def current(pool: ThreadPoolExecutor) -> BlockingBatch | None:
    """The batch that blocking work for ``pool`` joins here, if the caller runs inside one."""
    batch = _CURRENT.get()
    return batch if batch is not None and batch.pool is pool else None


def batch_context(pool: ThreadPoolExecutor, threads: int, *, helper_delay_s: float = HELPER_DELAY_S
                  ) -> contextvars.Context:
    """A copy of the current context in which blocking work for ``pool`` (of the task run in it and
    of the tasks that task creates) joins one new batch, drained by at most ``threads`` jobs."""
    context = contextvars.copy_context()
    batch = BlockingBatch(pool, threads, asyncio.get_running_loop(), helper_delay_s=helper_delay_s)
    context.run(_CURRENT.set, batch)
    return context
