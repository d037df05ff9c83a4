"""Warm-ups of ``rlyard.server``: a service listens at once but reports NOT_SERVING until its warm-up
coroutines finish; one that fails keeps it NOT_SERVING, and ``serve`` then exits with the error.
Against a real tool server on 127.0.0.1:0 whose warm-ups the tests hold with real events."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
import pytest

from rlyard.client import NO_RETRY, ToolClient
from rlyard.server import WarmUpError, serve
from rlyard.settings import ServerSettings

TOOL_SERVICE = "rlyard.tools.v1.ToolService"


async def test_health_turns_serving_when_the_warm_ups_finish_in_order(
    start_tools: Any, make_client: Any, tool_settings: Any
) -> None:
    definition = tool_settings().service()
    first, second, second_started = asyncio.Event(), asyncio.Event(), asyncio.Event()
    order: list[str] = []

    async def wait_first() -> None:
        await first.wait()
        order.append("first")

    async def wait_second() -> None:
        order.append("second")
        second_started.set()
        await second.wait()

    definition.warm_up += [wait_first, wait_second]
    running = await start_tools(definition=definition)
    client: ToolClient = make_client(running, retry=NO_RETRY)
    assert (await client.health(), await client.health(TOOL_SERVICE)) == ("NOT_SERVING", "NOT_SERVING")
    # Tools without a warm-up of their own answer meanwhile: health is what orchestrators wait on.
    assert not (await client.call_tool("sql_query", {"query": "SELECT 1"}, context={"db_id": "singer"})).is_error
    assert order == [] and not running.ready
    first.set()
    await asyncio.wait_for(second_started.wait(), timeout=5)
    assert order == ["first", "second"]                 # in order, one after the other
    assert await client.health() == "NOT_SERVING" and not running.ready
    second.set()
    await running.wait_ready(timeout=5)
    assert running.ready
    assert (await client.health(), await client.health(TOOL_SERVICE)) == ("SERVING", "SERVING")


async def test_a_failed_warm_up_keeps_not_serving_and_is_logged(
    start_tools: Any, make_client: Any, tool_settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    definition = tool_settings().service()

    async def broken() -> None:
        raise OSError("the index file is unreadable")

    definition.warm_up.append(broken)
    with caplog.at_level(logging.ERROR, logger="rlyard.server"):
        running = await start_tools(definition=definition)
        with pytest.raises(WarmUpError, match="tools: warm-up failed: the index file is unreadable"):
            await running.wait_ready(timeout=5)
    assert await make_client(running, retry=NO_RETRY).health() == "NOT_SERVING"
    [record] = [r for r in caplog.records if r.name == "rlyard.server"]
    assert "health stays NOT_SERVING" in record.getMessage() and record.exc_info is not None


async def test_stopping_cancels_a_pending_warm_up(start_tools: Any, tool_settings: Any) -> None:
    definition = tool_settings().service()
    never = asyncio.Event()
    definition.warm_up.append(never.wait)
    running = await start_tools(definition=definition)
    await asyncio.wait_for(running.stop(0), timeout=5)
    assert running.warm_task is not None and running.warm_task.cancelled()


async def test_serve_exits_with_the_error_of_a_failed_warm_up(tool_settings: Any) -> None:
    definition = tool_settings().service()
    stopped: list[bool] = []

    async def broken() -> None:
        raise ValueError("index of another corpus")

    async def on_stop() -> None:
        stopped.append(True)

    definition.warm_up.append(broken)
    definition.on_stop.append(on_stop)
    with pytest.raises(WarmUpError, match="index of another corpus"):
        await asyncio.wait_for(serve(definition, ServerSettings(host="127.0.0.1", port=0, grace_s=0)), timeout=10)
    assert stopped == [True]


async def test_without_warm_ups_a_service_is_serving_at_once(client: ToolClient, tool_server: Any) -> None:
    assert tool_server.warm_task is None and tool_server.ready
    assert await client.health() == "SERVING"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.health("no.such.Service")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
