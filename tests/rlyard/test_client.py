"""``ToolClient`` (deadlines, retries of UNAVAILABLE) and ``ToolStream`` (batching over
the ``CallTools`` stream), against real servers."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from rlyard.client import NO_RETRY, RetryPolicy, ToolClient
from rlyard.errors import DeadlineExceeded, Unavailable
from rlyard.server import RunningServer, Runtime, ServiceDefinition
from rlyard.settings import ServerSettings
from rlyard.tools.v1 import tools_pb2, tools_pb2_grpc
from tool_servers.app import SERVICE_NAME
from tool_servers.executor import ToolExecutor
from tool_servers.registry import ToolContext
from tool_servers.servicer import ToolServicer


@dataclass(frozen=True)
class CountingRetry(RetryPolicy):
    """A ``RetryPolicy`` that records each backoff it was asked for (one per failed attempt
    that is retried) and signals the first."""

    retried: list[int] = field(default_factory=list, compare=False)
    first_retry: asyncio.Event = field(default_factory=asyncio.Event, compare=False)

    def backoff(self, attempt: int) -> float:
        self.retried.append(attempt)
        self.first_retry.set()
        return super().backoff(attempt)


@pytest.fixture
def refused_port() -> Iterator[tuple[socket.socket, int]]:
    """A port bound by a socket that does not listen: connections to it are refused,
    and no other process can take it while the socket is open."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield sock, sock.getsockname()[1]
    sock.close()


# ---------------------------------------------------------------- retries and deadlines


def test_backoff_is_full_jitter_under_a_growing_cap() -> None:
    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=0.3, multiplier=2.0)
    for attempt, cap in [(1, 0.1), (2, 0.2), (3, 0.3), (6, 0.3)]:
        delays = [policy.backoff(attempt) for _ in range(200)]
        assert all(0 <= d <= cap for d in delays)
        assert max(delays) > cap / 2  # jittered over the range, not a constant


async def test_unavailable_is_retried_a_bounded_number_of_times(
    make_client: Any, refused_port: tuple[socket.socket, int]
) -> None:
    _, port = refused_port
    retry = CountingRetry(max_attempts=3, initial_backoff_s=0.05, max_backoff_s=0.1)
    client: ToolClient = make_client(f"127.0.0.1:{port}", retry=retry, timeout=2.0)
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.list_tools()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert retry.retried == [1, 2]  # three attempts in all
    assert time.monotonic() - started < 1.5


async def test_no_retry_gives_up_after_one_attempt(
    make_client: Any, refused_port: tuple[socket.socket, int]
) -> None:
    _, port = refused_port
    client: ToolClient = make_client(f"127.0.0.1:{port}", retry=NO_RETRY, timeout=2.0)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.open_session({"db_id": "singer"})
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_server_that_comes_up_after_the_first_attempt_is_reached(
    start_tools: Any, make_client: Any, refused_port: tuple[socket.socket, int]
) -> None:
    sock, port = refused_port
    retry = CountingRetry(max_attempts=200, initial_backoff_s=0.05, max_backoff_s=0.1)
    client: ToolClient = make_client(f"127.0.0.1:{port}", retry=retry, timeout=2.0)
    pending = asyncio.create_task(client.list_tools())
    await asyncio.wait_for(retry.first_retry.wait(), timeout=5)
    sock.close()  # free the port for the server (so_reuseport is off, so it must be free)
    await start_tools(server=ServerSettings(port=port))
    specs = await asyncio.wait_for(pending, timeout=15)
    assert [s.name for s in specs] == ["sql_query", "list_tables", "describe_table"]
    assert retry.retried and retry.retried[0] == 1


async def test_a_retry_window_bounds_the_retries_by_time(
    make_client: Any, refused_port: tuple[socket.socket, int]
) -> None:
    _, port = refused_port
    retry = CountingRetry(initial_backoff_s=0.02, max_backoff_s=0.05, window_s=0.5)
    client: ToolClient = make_client(f"127.0.0.1:{port}", retry=retry, timeout=2.0)
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.list_tools()
    elapsed = time.monotonic() - started
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(retry.retried) > retry.max_attempts       # the window, not the attempts, bounded it
    assert 0.3 < elapsed < 2.0, elapsed


async def test_a_retry_window_waits_for_a_service_that_restarts(
    start_tools: Any, make_client: Any, refused_port: tuple[socket.socket, int]
) -> None:
    """Issue 19: a service back on its port a second later failed the call, because the default
    policy gives up after 4 attempts (~0.4 s). Within a window the call waits for it."""
    sock, port = refused_port
    retry = CountingRetry(initial_backoff_s=0.05, max_backoff_s=0.2, window_s=30.0)
    client: ToolClient = make_client(f"127.0.0.1:{port}", retry=retry, timeout=2.0)
    pending = asyncio.create_task(client.list_tools())

    async def past_the_default_attempts() -> None:
        while True:
            if len(retry.retried) > RetryPolicy().max_attempts:
                return
            await asyncio.sleep(0.01)

    await asyncio.wait_for(past_the_default_attempts(), timeout=10)
    assert not pending.done()
    sock.close()
    await start_tools(server=ServerSettings(port=port))
    specs = await asyncio.wait_for(pending, timeout=15)
    assert [s.name for s in specs] == ["sql_query", "list_tables", "describe_table"]


def test_a_retry_window_policy() -> None:
    assert RetryPolicy.within(0) == NO_RETRY
    assert RetryPolicy.within(30) == RetryPolicy(initial_backoff_s=0.1, max_backoff_s=2.0, window_s=30)
    with pytest.raises(ValueError):
        RetryPolicy(window_s=-1)


async def test_a_deadline_passed_is_deadline_exceeded_and_not_retried(
    tool_server: RunningServer, make_client: Any, endless_count_sql: str
) -> None:
    retry = CountingRetry(max_attempts=4)
    client: ToolClient = make_client(tool_server, retry=retry)
    sid = await client.open_session({"db_id": "singer"})
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.call_tool("sql_query", {"query": endless_count_sql}, session_id=sid, timeout=0.3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 0.3 <= time.monotonic() - started < 1.0  # well before the 1.5 s SQL time limit
    assert retry.retried == []


async def test_the_client_default_deadline_applies_to_every_call(
    tool_server: RunningServer, make_client: Any, endless_count_sql: str
) -> None:
    client: ToolClient = make_client(tool_server, timeout=0.3, retry=NO_RETRY)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.call_tool("sql_query", {"query": endless_count_sql}, context={"db_id": "singer"})
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


# ---------------------------------------------------------------- ToolStream


class RecordingServicer(ToolServicer):
    """The real servicer, noting how many calls each ``CallTools`` message carried."""

    def __init__(self, executor: ToolExecutor, runtime: Runtime, ctx: ToolContext, sizes: list[int]) -> None:
        super().__init__(executor, runtime, ctx)
        self.sizes = sizes

    def CallTools(self, request_iterator: Any, context: Any) -> Any:
        async def recorded() -> AsyncIterator[tools_pb2.CallToolsRequest]:
            async for message in request_iterator:
                self.sizes.append(len(message.calls))
                yield message

        return super().CallTools(recorded(), context)


@pytest.fixture
async def recording(start_tools: Any, tool_settings: Any) -> tuple[RunningServer, list[int]]:
    executor, tool_ctx = tool_settings().executor()
    sizes: list[int] = []

    def register(server: grpc.aio.Server, runtime: Runtime) -> None:
        tools_pb2_grpc.add_ToolServiceServicer_to_server(RecordingServicer(executor, runtime, tool_ctx, sizes), server)

    async def stop() -> None:
        await executor.sessions.stop()
        tool_ctx.close()

    definition = ServiceDefinition("tools", [SERVICE_NAME], register, [executor.sessions.start], [stop])
    return await start_tools(definition=definition), sizes


def rows(result: Any) -> Any:
    return result.structured["rows"]


async def test_stream_batches_the_calls_of_one_tick_into_one_message(
    recording: tuple[RunningServer, list[int]], make_client: Any
) -> None:
    running, sizes = recording
    stream = make_client(running).stream(batch=True)
    ctx = {"db_id": "singer"}
    results = await asyncio.gather(*(stream.call("sql_query", {"query": f"SELECT {i}"}, context=ctx) for i in range(8)))
    assert [rows(r) for r in results] == [[[i]] for i in range(8)]
    assert sizes == [8]
    more = await asyncio.gather(
        *(stream.call("sql_query", {"query": f"SELECT {i} + 100"}, context=ctx) for i in range(3))
    )
    assert [rows(r) for r in more] == [[[100]], [[101]], [[102]]]
    assert sizes == [8, 3]
    await stream.close()


async def test_stream_without_batching_sends_one_message_per_call(
    recording: tuple[RunningServer, list[int]], make_client: Any
) -> None:
    running, sizes = recording
    stream = make_client(running).stream(batch=False)
    results = await asyncio.gather(
        *(stream.call("sql_query", {"query": f"SELECT {i}"}, context={"db_id": "singer"}) for i in range(5))
    )
    assert [rows(r) for r in results] == [[[i]] for i in range(5)]
    assert sizes == [1, 1, 1, 1, 1]
    await stream.close()


async def test_stream_reports_an_unknown_session_per_call(client: ToolClient, session_id: str) -> None:
    stream = client.stream()
    ok, ghost, also_ok = await asyncio.gather(
        stream.call("sql_query", {"query": "SELECT count(*) FROM stadium"}, session_id=session_id),
        stream.call("sql_query", {"query": "SELECT 1"}, session_id="ghost"),
        stream.call("list_tables", {}, session_id=session_id),
    )
    assert rows(ok) == [[9]] and ok.system_error_code == 0
    assert ghost.system_error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert "'ghost'" in ghost.system_error.message
    assert not also_ok.is_error and also_ok.content[0].text.startswith("concert (6 rows)")
    await stream.close()


async def test_stream_call_past_its_timeout_raises_and_the_stream_goes_on(
    client: ToolClient, session_id: str, endless_count_sql: str
) -> None:
    stream = client.stream()
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match=r"took longer than 0\.3s"):
        await stream.call("sql_query", {"query": endless_count_sql}, session_id=session_id, timeout=0.3)
    assert time.monotonic() - started < 1.0
    assert rows(await stream.call("sql_query", {"query": "SELECT 5"}, session_id=session_id)) == [[5]]
    await stream.close()  # also waits for the late answer of the timed-out call


async def test_stream_refuses_a_call_id_already_waiting(client: ToolClient, session_id: str) -> None:
    stream = client.stream()
    first = asyncio.create_task(stream.call("sql_query", {"query": "SELECT 1"}, session_id=session_id, call_id="x"))
    await asyncio.sleep(0)  # let it register
    with pytest.raises(ValueError, match="'x' is already waiting"):
        await stream.call("sql_query", {"query": "SELECT 2"}, session_id=session_id, call_id="x")
    assert rows(await first) == [[1]]
    await stream.close()


async def test_calls_waiting_on_a_broken_stream_fail_with_unavailable(
    start_tools: Any, make_client: Any, endless_count_sql: str
) -> None:
    running = await start_tools()
    stream = make_client(running).stream()
    ctx = {"db_id": "singer"}
    assert rows(await stream.call("sql_query", {"query": "SELECT 1"}, context=ctx)) == [[1]]
    waiting = asyncio.create_task(stream.call("sql_query", {"query": endless_count_sql}, context=ctx))

    async def until_in_flight() -> None:
        while True:
            if running.limiter.in_flight == 1:  # the call (a stream is admitted per call, not as a whole)
                return
            await asyncio.sleep(0.005)

    await asyncio.wait_for(until_in_flight(), timeout=5)
    await running.stop(0)
    with pytest.raises(Unavailable, match="CallTools stream"):
        await asyncio.wait_for(waiting, timeout=5)
