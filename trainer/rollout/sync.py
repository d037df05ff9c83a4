"""The rollout event loop for the synchronous trainer: one long-lived loop in a daemon thread.

    with EngineThread() as loop:
        client = loop.run(make_client())          # gRPC aio objects belong to this loop
        engine = RolloutEngine(sampler, tokenizer, client, config, seed=0)
        trajectories = rollout_sync(loop, engine, tasks, group_size=8, step=step)

Everything async (clients, streams, the engine's semaphores) must be created and used on this
loop; ``run`` submits a coroutine with ``run_coroutine_threadsafe`` and waits for its result.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from rlyard.domain import Task
from trainer.rollout.engine import RolloutEngine
from trainer.types import RolloutTrajectory

T = TypeVar("T")


class EngineThread:
    """An asyncio event loop running forever in a daemon thread."""

    def __init__(self, name: str = "rollout-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait (from another thread) for its result."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("EngineThread.run called from its own loop; await the coroutine instead")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start ``coro`` on the loop without waiting: its future, for work that may overlap the
        caller's (the memory's feedback while the update trains)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        """Cancel what is left on the loop, stop it and join the thread."""
        if self.loop.is_closed():
            return

        async def _cancel_rest() -> None:
            current = asyncio.current_task()
            rest = [t for t in asyncio.all_tasks() if t is not current]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)
            await self.loop.shutdown_asyncgens()

        asyncio.run_coroutine_threadsafe(_cancel_rest(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    def __enter__(self) -> EngineThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def rollout_sync(
    thread: EngineThread,
    engine: RolloutEngine,
    tasks: Sequence[Task],
    group_size: int | None = None,
    *,
    step: int = 0,
    timeout: float | None = None,
) -> list[RolloutTrajectory]:
    """``engine.run(tasks, group_size, step=step)`` on ``thread``'s loop, from synchronous code."""
    return thread.run(engine.run(tasks, group_size, step=step), timeout=timeout)
