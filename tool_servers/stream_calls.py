"""The calls of one ``CallTools`` stream: those running (by call_id), those waiting to start, and
those finished until the writer takes them.

Under load a stream runs its calls in **groups**: a call starts at once while fewer than
``group`` calls of the stream run; past that it waits, and the waiting calls start together
when the running ones have all finished. ``group`` is half the most calls the stream has had
in hand at once (at least ``min_group``), so a client with many callers keeps two groups out of
step: the server works on one while the client turns the other's results around, instead of all
of them travelling together and the server waiting for the client. A stream with fewer calls in
hand than ``min_group`` never waits. A call that takes long must not hold up the calls waiting
behind it: when no call of the stream has finished for ``hold_s`` while calls wait, the next
group starts anyway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

C = TypeVar("C")   # a call, as the servicer starts it
F = TypeVar("F")   # a finished call, as the writer sends it

MIN_GROUP = 8      # below this many calls in hand a stream runs every call at once
HOLD_S = 0.002     # waiting calls start anyway when no call has finished for this long


class StreamCalls(Generic[C, F]):
    """Calls of one stream started by ``start`` (which returns the task that runs one and calls
    ``finish`` with its call_id and result)."""

    def __init__(self, start: Callable[[C], asyncio.Task[None]], *, min_group: int = MIN_GROUP,
                 hold_s: float = HOLD_S) -> None:
        self._start = start
        self.min_group = max(1, min_group)
        self.hold_s = hold_s
        self.running: dict[str, asyncio.Task[None]] = {}
        self.waiting: dict[str, C] = {}      # in arrival order
        self.finished: list[F] = []
        self.reading = True                  # more calls may come
        self.peak = 0                        # the most calls in hand at once
        self._progress = False               # a call finished since the hold timer last looked
        self._timer: asyncio.TimerHandle | None = None
        self._waiter: asyncio.Future[None] | None = None

    @property
    def group(self) -> int:
        """How many calls run at once before the others wait for the next group."""
        return max(self.min_group, (self.peak + 1) // 2)

    def in_flight(self, call_id: str) -> bool:
        return call_id in self.running or call_id in self.waiting

    def add(self, calls: Iterable[tuple[str, C]]) -> None:
        """Calls that arrived together (by call_id, each not in flight): started now while the
        running group has room and none wait before them, else waiting for the next group."""
        calls = list(calls)
        if not calls:
            return
        in_hand = len(self.running) + len(self.waiting) + len(calls)
        if in_hand > self.peak:
            self.peak = in_hand
        group = self.group
        for call_id, call in calls:
            if not self.waiting and len(self.running) < group:
                self.running[call_id] = self._start(call)
            else:
                self.waiting[call_id] = call
        if self.waiting and self._timer is None:
            self._progress = False
            self._timer = asyncio.get_running_loop().call_later(self.hold_s, self._hold_check)

    def finish(self, call_id: str, item: F) -> None:
        """The call ``call_id`` (running) has its result ``item``."""
        del self.running[call_id]
        self.finished.append(item)
        self._progress = True
        self._wake()
        if not self.running and self.waiting:
            self._next_group()

    def answer(self, item: F) -> None:
        """A result for a call that never ran (refused)."""
        self.finished.append(item)
        self._wake()

    def _next_group(self) -> None:
        for _ in range(min(self.group, len(self.waiting))):
            call_id = next(iter(self.waiting))
            self.running[call_id] = self._start(self.waiting.pop(call_id))

    def _hold_check(self) -> None:
        self._timer = None
        if not self.waiting:
            return
        if not self._progress:        # the running calls are stuck in something slow
            self._next_group()
        if self.waiting:
            self._progress = False
            self._timer = asyncio.get_running_loop().call_later(self.hold_s, self._hold_check)

    def end_of_requests(self) -> None:
        self.reading = False
        self._wake()

    def cancel(self) -> None:
        """The stream is over: cancel the running calls, drop the waiting ones."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.waiting.clear()
        for task in list(self.running.values()):
            task.cancel()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def take(self) -> list[F]:
        """What finished since the last take, waiting for at least one; empty once every call
        has been answered and no more can come."""
        while not self.finished and (self.reading or self.running or self.waiting):
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        finished, self.finished = self.finished, []
        return finished
