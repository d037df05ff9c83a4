"""``tool_servers.blocking``: the blocking work of one event-loop turn goes to the pool as one job,
each call keeps its own result or exception, and a slow call gets a helper thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tool_servers.blocking import batch_context, current


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(4, thread_name_prefix="test-tool")
    yield executor
    executor.shutdown(wait=True)


def _submitted(pool: ThreadPoolExecutor) -> list[int]:
    """Counts the jobs handed to ``pool`` (the real pool still runs them)."""
    jobs: list[int] = []
    submit = pool.submit

    def counting(fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        jobs.append(1)
        return submit(fn, *args, **kwargs)

    pool.submit = counting  # type: ignore[method-assign]
    return jobs


async def test_the_work_of_one_turn_is_one_job_on_one_thread(pool: ThreadPoolExecutor) -> None:
    jobs = _submitted(pool)

    def work(i: int) -> tuple[int, int]:
        if i == 3:
            raise ValueError("call 3 failed")
        return i * i, threading.get_ident()

    async def calls() -> list[object]:
        batch = current(pool)
        assert batch is not None
        return await asyncio.gather(*(batch.submit(work, (i,)) for i in range(8)), return_exceptions=True)

    outcomes = await asyncio.wait_for(asyncio.get_running_loop().create_task(
        calls(), context=batch_context(pool, 4)), timeout=5)
    assert isinstance(outcomes[3], ValueError) and str(outcomes[3]) == "call 3 failed"
    values = [o for i, o in enumerate(outcomes) if i != 3]
    assert [v[0] for v in values] == [i * i for i in range(8) if i != 3]   # type: ignore[index]
    assert len({v[1] for v in values}) == 1 and values[0][1] != threading.get_ident()   # type: ignore[index]
    assert jobs == [1]
    assert current(pool) is None        # outside the context, work goes to the pool call by call


async def test_a_slow_call_gets_a_helper_for_the_work_queued_behind_it(pool: ThreadPoolExecutor) -> None:
    release = threading.Event()
    done_at: set[int] = set()
    loop = asyncio.get_running_loop()
    fast_ones_done = asyncio.Event()

    def slow() -> str:
        release.wait(5)
        return "slow"

    def fast(i: int) -> int:
        done_at.add(i)
        if len(done_at) == 3:
            loop.call_soon_threadsafe(fast_ones_done.set)
        return i

    async def calls() -> list[object]:
        batch = current(pool)
        assert batch is not None
        return await asyncio.gather(batch.submit(slow, ()), *(batch.submit(fast, (i,)) for i in range(3)))

    task = asyncio.get_running_loop().create_task(calls(), context=batch_context(pool, 4))
    await asyncio.wait_for(fast_ones_done.wait(), timeout=2)    # while the slow one still runs
    assert not task.done()
    release.set()
    assert await asyncio.wait_for(task, timeout=5) == ["slow", 0, 1, 2]


async def test_a_pool_that_is_shut_down_fails_the_queued_calls(pool: ThreadPoolExecutor) -> None:
    pool.shutdown(wait=True)

    async def call() -> object:
        batch = current(pool)
        assert batch is not None
        return await batch.submit(lambda: 1, ())

    with pytest.raises(RuntimeError, match="shutdown"):
        await asyncio.wait_for(asyncio.get_running_loop().create_task(call(), context=batch_context(pool, 2)), 5)


@pytest.mark.parametrize("stuck", [True, False])
async def test_a_burst_gets_its_own_job_at_once_while_the_running_one_is_stuck(
    pool: ThreadPoolExecutor, stuck: bool
) -> None:
    """A job counts as stuck once its current call is older than the helper delay (here 50 ms): a
    burst that comes then gets a job of its own at once; one that comes earlier waits for the job."""
    jobs = _submitted(pool)
    loop = asyncio.get_running_loop()
    release, slow_started = threading.Event(), asyncio.Event()

    def slow() -> str:
        loop.call_soon_threadsafe(slow_started.set)
        release.wait(5)
        return "slow"

    async def calls() -> list[object]:
        batch = current(pool)
        assert batch is not None
        first = batch.submit(slow, ())
        await asyncio.wait_for(slow_started.wait(), timeout=5)
        if stuck:
            await asyncio.sleep(0.2)        # time must pass: the slow call becomes older than the delay
        before = len(jobs)
        burst = [batch.submit(lambda i=i: i, ()) for i in range(3)]
        await asyncio.sleep(0)              # one turn: the burst's flush runs, the helper's timer has not
        assert len(jobs) == before + (1 if stuck else 0)
        if stuck:
            assert await asyncio.wait_for(asyncio.gather(*burst), timeout=5) == [0, 1, 2]
            assert not first.done()
        release.set()
        return await asyncio.gather(first, *burst)

    task = loop.create_task(calls(), context=batch_context(pool, 4, helper_delay_s=0.05))
    assert await asyncio.wait_for(task, timeout=5) == ["slow", 0, 1, 2]


async def test_a_job_dropped_by_a_pool_shutdown_fails_its_calls() -> None:
    """A shutdown that cancels the pool's queued jobs (as a stopping server's does) fails the calls
    queued for them instead of leaving them waiting."""
    busy = threading.Event()
    pool_of_one = ThreadPoolExecutor(1)
    pool_of_one.submit(busy.wait, 5)          # the pool's one thread is taken: the batch's job queues

    async def call() -> object:
        batch = current(pool_of_one)
        assert batch is not None
        work = batch.submit(lambda: 1, ())
        await asyncio.sleep(0)                # the flush submits the job
        pool_of_one.shutdown(wait=False, cancel_futures=True)
        return await work

    try:
        with pytest.raises(RuntimeError, match="the tool pool was shut down"):
            await asyncio.wait_for(asyncio.get_running_loop().create_task(
                call(), context=batch_context(pool_of_one, 1)), timeout=5)
    finally:
        busy.set()


async def test_the_results_of_a_burst_come_back_together(pool: ThreadPoolExecutor) -> None:
    """The job wakes the event loop once its queue is empty, not at its first result, so the loop
    hands the burst's results over in one turn (and sends them in one message)."""
    done_when_first_seen: list[int] = []

    async def calls() -> list[object]:
        batch = current(pool)
        assert batch is not None
        futures = [batch.submit(lambda i=i: i, ()) for i in range(8)]
        futures[0].add_done_callback(lambda _: done_when_first_seen.append(sum(f.done() for f in futures)))
        return await asyncio.gather(*futures)

    task = asyncio.get_running_loop().create_task(calls(), context=batch_context(pool, 4, helper_delay_s=5))
    assert await asyncio.wait_for(task, timeout=5) == list(range(8))
    assert done_when_first_seen == [8]


async def test_results_that_finished_before_a_slow_call_are_handed_over_while_it_runs(
    pool: ThreadPoolExecutor,
) -> None:
    """The job is stuck in the slow call, its queue empty but not done: the helper timer hands over
    the fast call's result."""
    release = threading.Event()

    def slow() -> str:
        release.wait(5)
        return "slow"

    async def calls() -> list[object]:
        batch = current(pool)
        assert batch is not None
        fast, slow_one = batch.submit(lambda: "fast", ()), batch.submit(slow, ())
        assert await asyncio.wait_for(fast, timeout=2) == "fast"
        assert not slow_one.done()
        release.set()
        return [await fast, await slow_one]

    task = asyncio.get_running_loop().create_task(calls(), context=batch_context(pool, 4, helper_delay_s=0.05))
    try:
        assert await asyncio.wait_for(task, timeout=5) == ["fast", "slow"]
    finally:
        release.set()
