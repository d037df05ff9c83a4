"""The service runtime every rlyard server shares (``rlyard.server`` + the interceptor):
health, reflection, bearer auth, admission, message limits, metrics, graceful stop.
All against a real tool server on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from prometheus_client.parser import text_string_to_metric_families

from rlyard.client import NO_RETRY, ToolClient
from rlyard.errors import Unavailable
from rlyard.server import RunningServer
from rlyard.settings import ServerSettings

TOOL_SERVICE = "rlyard.tools.v1.ToolService"


async def rpc_error(awaitable: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await awaitable
    return info.value


async def wait_in_flight(running: RunningServer, n: int) -> None:
    """Until the server's limiter counts ``n`` calls in flight."""

    async def poll() -> None:
        while True:
            if running.limiter.in_flight == n:
                return
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout=5)


# ---------------------------------------------------------------- health and reflection


async def test_health_is_serving_after_start(client: ToolClient) -> None:
    assert await client.health() == "SERVING"
    assert await client.health(TOOL_SERVICE) == "SERVING"
    err = await rpc_error(client.health("no.such.Service"))
    assert err.code() == grpc.StatusCode.NOT_FOUND


def _reflect(address: str) -> tuple[set[str], list[str]]:
    # The reflection client is synchronous: it runs in a thread while the loop serves.
    with grpc.insecure_channel(address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        pool = DescriptorPool(database)
        methods = [m.name for m in pool.FindServiceByName(TOOL_SERVICE).methods]
    return services, methods


async def test_reflection_lists_the_services(tool_server: RunningServer) -> None:
    services, methods = await asyncio.to_thread(_reflect, tool_server.address)
    assert {TOOL_SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services
    assert methods == ["ListTools", "CallTool", "CallTools", "OpenSession", "CloseSession"]


# ---------------------------------------------------------------- bearer auth


async def test_bearer_token_is_required_except_for_health_and_reflection(
    start_tools: Any, make_client: Any
) -> None:
    running = await start_tools(server=ServerSettings(auth_token="s3cret"))
    anonymous: ToolClient = make_client(running, retry=NO_RETRY)
    wrong: ToolClient = make_client(running, retry=NO_RETRY, auth_token="s3cre")
    good: ToolClient = make_client(running, retry=NO_RETRY, auth_token="s3cret")

    for client in (anonymous, wrong):
        err = await rpc_error(client.list_tools())
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert err.details() == "missing or wrong bearer token"
        err = await rpc_error(client.open_session({"db_id": "singer"}))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(Unavailable, match="UNAUTHENTICATED"):
        await anonymous.stream().call("sql_query", {"query": "SELECT 1"}, context={"db_id": "singer"})

    assert len(await good.list_tools()) == 3
    sid = await good.open_session({"db_id": "singer"})
    assert not (await good.call_tool("sql_query", {"query": "SELECT 1"}, session_id=sid)).is_error
    stream = good.stream()
    assert not (await stream.call("sql_query", {"query": "SELECT 2"}, session_id=sid)).is_error
    await stream.close()

    # probes carry no token
    assert await anonymous.health() == "SERVING"
    services, _ = await asyncio.to_thread(_reflect, running.address)
    assert TOOL_SERVICE in services


# ---------------------------------------------------------------- limits


async def test_oversize_request_is_resource_exhausted(start_tools: Any, make_client: Any) -> None:
    running = await start_tools(server=ServerSettings(max_message_bytes=4096))
    client: ToolClient = make_client(running, retry=NO_RETRY)  # the client itself allows 16 MiB
    small = await client.call_tool("sql_query", {"query": "SELECT 1"}, context={"db_id": "singer"})
    assert not small.is_error
    err = await rpc_error(
        client.call_tool("sql_query", {"query": "SELECT '" + "x" * 8000 + "'"}, context={"db_id": "singer"})
    )
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_oversize_response_is_resource_exhausted(start_tools: Any, make_client: Any) -> None:
    running = await start_tools(server=ServerSettings(max_message_bytes=4096))
    client: ToolClient = make_client(running, retry=NO_RETRY)
    err = await rpc_error(
        client.call_tool("sql_query", {"query": "SELECT printf('%.*c', 8000, 'x')"}, context={"db_id": "singer"})
    )
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_concurrency_limit_is_resource_exhausted(
    start_tools: Any, make_client: Any, endless_count_sql: str
) -> None:
    running = await start_tools(server=ServerSettings(max_concurrent_rpcs=1))
    client: ToolClient = make_client(running, retry=NO_RETRY)
    sid = await client.open_session({"db_id": "singer"})
    slow = asyncio.create_task(client.call_tool("sql_query", {"query": endless_count_sql}, session_id=sid))
    await wait_in_flight(running, 1)

    err = await rpc_error(client.call_tool("sql_query", {"query": "SELECT 1"}, session_id=sid))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limit of 1 concurrent calls" in (err.details() or "")
    assert (await rpc_error(client.list_tools())).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await client.health() == "SERVING"  # probes are never limited
    assert not slow.done()

    result = await asyncio.wait_for(slow, timeout=5)
    assert result.is_error and "time limit" in result.content[0].text
    assert running.limiter.in_flight == 0
    assert not (await client.call_tool("sql_query", {"query": "SELECT 1"}, session_id=sid)).is_error


# ---------------------------------------------------------------- metrics


def _rpc_total(text: str, method: str, code: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "rlyard_rpc_total" and sample.labels == {
                "service": "tools", "method": method, "code": code
            }:
                return sample.value
    return 0.0


async def test_prometheus_counts_rpcs_by_method_and_code(start_tools: Any, make_client: Any) -> None:
    running = await start_tools(server=ServerSettings(metrics_port=0))
    assert running.metrics is not None and running.metrics.port > 0
    client: ToolClient = make_client(running, retry=NO_RETRY)
    url = f"http://127.0.0.1:{running.metrics.port}/metrics"
    list_tools = f"/{TOOL_SERVICE}/ListTools"
    call_tool = f"/{TOOL_SERVICE}/CallTool"

    async with httpx.AsyncClient(timeout=5) as http:
        before = (await http.get(url)).text
        await client.list_tools()
        await client.list_tools()
        await rpc_error(client.call_tool("list_tables", {}, session_id="ghost"))
        await client.call_tool("list_tables", {}, context={"db_id": "singer"})
        response = await http.get(url)
    assert response.status_code == 200
    after = response.text

    assert _rpc_total(after, list_tools, "OK") - _rpc_total(before, list_tools, "OK") == 2
    assert _rpc_total(after, call_tool, "NOT_FOUND") - _rpc_total(before, call_tool, "NOT_FOUND") == 1
    assert _rpc_total(after, call_tool, "OK") - _rpc_total(before, call_tool, "OK") == 1
    assert 'rlyard_tool_calls_total{outcome="ok",tool="list_tables"}' in after
    assert 'rlyard_rpc_in_flight{service="tools"} 0.0' in after


# ---------------------------------------------------------------- graceful stop


async def test_graceful_stop_drains_in_flight_calls_and_refuses_new_ones(
    start_tools: Any, make_client: Any, endless_count_sql: str
) -> None:
    running = await start_tools()
    client: ToolClient = make_client(running, retry=NO_RETRY)
    sid = await client.open_session({"db_id": "singer"})
    watch = health_pb2_grpc.HealthStub(client.channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
    first = await asyncio.wait_for(watch.read(), timeout=5)
    assert first.status == health_pb2.HealthCheckResponse.SERVING

    slow = asyncio.create_task(client.call_tool("sql_query", {"query": endless_count_sql}, session_id=sid))
    await wait_in_flight(running, 1)
    started = time.monotonic()
    stop = asyncio.create_task(running.stop(grace=5))

    update = await asyncio.wait_for(watch.read(), timeout=2)
    assert update.status == health_pb2.HealthCheckResponse.NOT_SERVING
    watch.cancel()

    late: ToolClient = make_client(running, retry=NO_RETRY)
    assert (await rpc_error(late.list_tools())).code() == grpc.StatusCode.UNAVAILABLE
    assert (await rpc_error(client.list_tools())).code() == grpc.StatusCode.UNAVAILABLE
    assert not slow.done()  # refused while the in-flight call was still running

    result = await asyncio.wait_for(slow, timeout=5)
    assert result.is_error and "time limit" in result.content[0].text  # its own result, not CANCELLED
    await asyncio.wait_for(stop, timeout=5)
    assert time.monotonic() - started < 4  # stopped once drained, not at the end of the grace
