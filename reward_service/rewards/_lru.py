"""An async LRU for what rewards fetch from other services (gold SQL results, POI records):
concurrent misses of one key share one fetch, a failed fetch is not stored, ``None`` is a value
(e.g. "no such POI") and is cached like any other; ``size <= 0`` disables the cache."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class AsyncLru(Generic[K, V]):
    """An LRU of ``size`` entries; ``hits``/``misses`` count lookups (a shared in-flight fetch is a hit)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.hits = 0
        self.misses = 0
        self._data: OrderedDict[K, V] = OrderedDict()
        self._inflight: dict[K, asyncio.Task[V]] = {}

    def __len__(self) -> int:
        return len(self._data)

    async def get(self, key: K, fetch: Callable[[], Awaitable[V]]) -> V:
        """The cached value of ``key``, else ``await fetch()`` (stored if it returns)."""
        if self.size <= 0:
            self.misses += 1
            return await fetch()
        if key in self._data:
            self._data.move_to_end(key)
            self.hits += 1
            return self._data[key]
        task = self._inflight.get(key)
        if task is None:
            self.misses += 1

            async def run() -> V:
                return await fetch()

            task = asyncio.get_running_loop().create_task(run())
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._finish(key, t))
        else:
            self.hits += 1
        # shield: one waiter cancelled must not cancel the fetch the others wait for
        return await asyncio.shield(task)

    def _finish(self, key: K, task: asyncio.Task[V]) -> None:
        self._inflight.pop(key, None)
        if task.cancelled() or task.exception() is not None:
            return
        self._data[key] = task.result()
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)
