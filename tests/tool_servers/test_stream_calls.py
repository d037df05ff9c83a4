"""``tool_servers.stream_calls``: under load a stream runs its calls in two groups out of step;
a stream with few calls runs each at once, and a stuck call holds up no group for long."""

from __future__ import annotations

import asyncio

import pytest

from tool_servers.stream_calls import StreamCalls


class Calls:
    """``StreamCalls`` whose calls (named by call_id) finish when the test releases them."""

    def __init__(self, *, min_group: int = 4, hold_s: float = 5.0) -> None:
        self.started: list[str] = []
        self.release: dict[str, asyncio.Event] = {}
        self.calls: StreamCalls[str, str] = StreamCalls(self._start, min_group=min_group, hold_s=hold_s)

    def _start(self, call_id: str) -> asyncio.Task[None]:
        self.started.append(call_id)
        self.release[call_id] = asyncio.Event()
        return asyncio.get_running_loop().create_task(self._run(call_id))

    async def _run(self, call_id: str) -> None:
        await self.release[call_id].wait()
        self.calls.finish(call_id, f"result of {call_id}")

    def add(self, *call_ids: str) -> None:
        self.calls.add((cid, cid) for cid in call_ids)

    async def finish(self, *call_ids: str) -> None:
        for cid in call_ids:
            self.release[cid].set()
        for _ in range(3):                       # the released tasks run and finish
            await asyncio.sleep(0)


def ids(prefix: str, n: int, start: int = 0) -> list[str]:
    return [f"{prefix}{i}" for i in range(start, start + n)]


async def test_a_stream_with_fewer_calls_than_the_smallest_group_runs_each_at_once() -> None:
    c = Calls(min_group=4)
    c.add("a", "b")
    c.add("c")
    assert c.started == ["a", "b", "c"] and not c.calls.waiting
    await c.finish("a")
    c.add("d")                                   # three in hand: still below the group
    assert c.started == ["a", "b", "c", "d"]


async def test_many_calls_run_in_two_groups_that_take_turns() -> None:
    """Eight calls in one message with groups of at least four: half start; the others wait, in
    order, with what comes meanwhile, and start together once the whole running group is done."""
    c = Calls(min_group=4)
    c.add(*ids("a", 8))
    assert c.calls.group == 4
    assert c.started == ids("a", 4)
    assert list(c.calls.waiting) == ids("a", 4, 4)
    assert all(c.calls.in_flight(cid) for cid in ids("a", 8))
    await c.finish("a0", "a1", "a2")
    assert c.started == ids("a", 4)              # the group is not done: nothing new starts
    c.add("b0")                                  # a call that comes now waits behind the others
    assert list(c.calls.waiting) == [*ids("a", 4, 4), "b0"]
    await c.finish("a3")
    assert c.started == ids("a", 8)              # the next group: the four that waited first
    assert list(c.calls.waiting) == ["b0"]
    assert await c.calls.take() == [f"result of a{i}" for i in range(4)]
    await c.finish(*ids("a", 4, 4))
    assert c.started == [*ids("a", 8), "b0"]
    assert not c.calls.waiting


async def test_the_group_is_half_the_most_calls_the_stream_had_in_hand() -> None:
    c = Calls(min_group=4)
    c.add(*ids("a", 20))
    assert c.calls.peak == 20 and c.calls.group == 10
    assert c.started == ids("a", 10)
    await c.finish(*ids("a", 10))
    assert c.started == ids("a", 20)


async def test_waiting_calls_start_when_no_call_has_finished_for_the_hold_time() -> None:
    """A call stuck in something slow does not hold up the calls waiting behind its group."""
    c = Calls(min_group=2, hold_s=0.05)
    c.add(*ids("a", 4))
    assert c.started == ["a0", "a1"]
    await c.finish("a1")                         # a0 is stuck
    await asyncio.sleep(0.2)
    assert c.started == ids("a", 4)
    await c.finish("a2", "a3", "a0")
    assert sorted(await c.calls.take()) == sorted(f"result of {cid}" for cid in ids("a", 4))


async def test_calls_that_keep_finishing_keep_the_others_waiting() -> None:
    c = Calls(min_group=2, hold_s=0.5)
    c.add(*ids("a", 6))                          # groups of 3
    for cid in ("a0", "a1"):
        await asyncio.sleep(0.2)                 # progress within every hold time (0.3 s to spare) ...
        await c.finish(cid)
    await asyncio.sleep(0.2)                     # ... though more than one hold time passes in all
    assert c.started == ids("a", 3)
    await c.finish("a2")
    assert c.started == ids("a", 6)


async def test_take_returns_results_and_ends_when_every_call_is_answered() -> None:
    c = Calls(min_group=1)
    c.add("a0", "a1")                            # a group of one: a1 waits
    c.calls.answer("refused")                    # a call that never ran
    assert await c.calls.take() == ["refused"]
    c.calls.end_of_requests()
    take = asyncio.get_running_loop().create_task(c.calls.take())
    await c.finish("a0")
    assert await take == ["result of a0"]
    await c.finish("a1")
    assert await c.calls.take() == ["result of a1"]
    assert await asyncio.wait_for(c.calls.take(), timeout=1) == []


async def test_cancel_stops_the_running_calls_and_drops_the_waiting_ones() -> None:
    c = Calls(min_group=1, hold_s=0.01)
    c.add("a0", "a1")
    running = c.calls.running["a0"]
    c.calls.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    await asyncio.sleep(0.05)                    # the hold timer is gone too
    assert c.started == ["a0"] and not c.calls.waiting
