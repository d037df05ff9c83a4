"""The runtime under bad requests (issue 19): a request that does not decode is INVALID_ARGUMENT,
an unexpected error is UNKNOWN with a message that names no Python exception, long messages are
clipped to fit the status trailers, and what a client can trigger at will is logged rate-limited.
Against a real tool server; the undecodable bytes are crafted by hand (our clients cannot send them)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from pydantic import BaseModel

from rlyard.client import NO_RETRY, ToolClient
from rlyard.common.v1 import common_pb2
from rlyard.domain import ToolResult
from rlyard.errors import clip
from rlyard.logs import RateLimitedLog
from rlyard.server import Runtime, ServiceDefinition
from rlyard.tools.v1 import tools_pb2, tools_pb2_grpc
from tool_servers.app import SERVICE_NAME
from tool_servers.registry import ToolContext
from tool_servers.servicer import ToolServicer
from tool_servers.session import Session

EXCEPTION_NAMES = ("RecursionError", "ValueError", "DecodeError", "RuntimeError", "Traceback", "<class")
CALL_TOOL = "/rlyard.tools.v1.ToolService/CallTool"
CALL_TOOLS = "/rlyard.tools.v1.ToolService/CallTools"


def with_bad_utf8(field: str) -> bytes:
    """A serialised ``CallToolRequest`` whose ``call.<field>`` holds bytes that are not UTF-8."""
    values = {"call_id": "c1", "name": "sql_query", "arguments_json": '{"query": "SELECT 1"}', field: "QQQQ"}
    request = tools_pb2.CallToolRequest(call=common_pb2.ToolCall(**values), context={"db_id": "concert_singer"})
    data = request.SerializeToString()
    assert data.count(b"QQQQ") == 1
    return data.replace(b"QQQQ", b"\xff\xfe\x80\xc0")


def in_a_message(call: bytes) -> bytes:
    """``call`` (a serialised ``CallToolRequest``) as the one call of a ``CallToolsRequest``."""
    assert len(call) < 128   # a one-byte length prefix
    return b"\x0a" + bytes([len(call)]) + call


def good_call(call_id: str) -> tools_pb2.CallToolRequest:
    return tools_pb2.CallToolRequest(call=common_pb2.ToolCall(call_id=call_id, name="sql_query",
                                                              arguments_json='{"query": "SELECT 7"}'),
                                     context={"db_id": "concert_singer"})


def problems(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


@pytest.mark.parametrize("field", ["call_id", "name", "arguments_json"])
async def test_a_request_that_does_not_decode_is_invalid_argument(
    field: str, client: ToolClient, caplog: pytest.LogCaptureFixture
) -> None:
    raw = client.channel.unary_unary(CALL_TOOL, request_serializer=lambda b: b,
                                     response_deserializer=tools_pb2.CallToolResponse.FromString)
    with caplog.at_level(logging.INFO), pytest.raises(grpc.aio.AioRpcError) as info:
        await raw(with_bad_utf8(field), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details() or ""
    assert "did not decode" in details and "UTF-8" in details
    assert not any(name in details for name in EXCEPTION_NAMES), details
    assert problems(caplog) == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "did not decode" in warnings[0].getMessage()
    # the server goes on
    assert not (await client.call_tool("sql_query", {"query": "SELECT 1"}, context={"db_id": "singer"})).is_error


async def test_the_calls_of_a_stream_message_that_does_not_decode_are_answered_one_by_one(
    client: ToolClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The tool server's stream reads such a message call by call: the calls that decode run, one
    with a readable call_id is refused under it, and the stream goes on (ended, the client's next
    write failed with INTERNAL 'Internal error from Core' instead of the server's status)."""
    raw = client.channel.stream_stream(CALL_TOOLS, request_serializer=lambda b: b,
                                       response_deserializer=tools_pb2.CallToolsResponse.FromString)
    call = raw(timeout=10)
    bad_arguments = with_bad_utf8("arguments_json").replace(b"c1", b"b1")
    bad_call_id = with_bad_utf8("call_id")
    good = tools_pb2.CallToolsRequest(calls=[good_call("ok2")]).SerializeToString()
    with caplog.at_level(logging.INFO):
        await call.write(tools_pb2.CallToolsRequest(calls=[good_call("ok1")]).SerializeToString())
        await call.write(good + in_a_message(bad_arguments) + in_a_message(bad_call_id))
        await call.write(tools_pb2.CallToolsRequest(calls=[good_call("ok3")]).SerializeToString())
        await call.done_writing()
        answered = {r.call_id: r async for response in call for r in response.results}
    assert await call.code() == grpc.StatusCode.OK
    assert sorted(answered) == ["b1", "ok1", "ok2", "ok3"]
    assert all(json.loads(answered[f"ok{i}"].structured_json)["rows"] == [[7]] for i in (1, 2, 3))
    refused = answered["b1"].system_error
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "did not decode" in refused.message
    assert not any(name in refused.message for name in EXCEPTION_NAMES), refused.message
    assert problems(caplog) == []
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "1 are refused, 1 have no readable call_id" in warning.getMessage()


class PlainServicer(ToolServicer):
    """The real servicer, its ``CallTools`` not marked ``accepts_undecodable``."""

    async def CallTools(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        async for response in super().CallTools(request_iterator, context):
            yield response


async def test_a_stream_that_takes_no_undecodable_message_ends_with_invalid_argument_after_the_others(
    start_tools: Any, tool_settings: Any, make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    executor, tool_ctx = tool_settings().executor()

    def register(server: grpc.aio.Server, runtime: Runtime) -> None:
        tools_pb2_grpc.add_ToolServiceServicer_to_server(PlainServicer(executor, runtime, tool_ctx), server)

    async def stop() -> None:
        await executor.sessions.stop()
        tool_ctx.close()

    running = await start_tools(definition=ServiceDefinition("tools", [SERVICE_NAME], register,
                                                             [executor.sessions.start], [stop]))
    client: ToolClient = make_client(running, retry=NO_RETRY)
    raw = client.channel.stream_stream(CALL_TOOLS, request_serializer=lambda b: b,
                                       response_deserializer=tools_pb2.CallToolsResponse.FromString)
    call = raw(timeout=10)
    with caplog.at_level(logging.INFO):
        await call.write(tools_pb2.CallToolsRequest(calls=[good_call("ok")]).SerializeToString())
        await call.write(in_a_message(with_bad_utf8("arguments_json")))
        await call.done_writing()
        answered = []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for response in call:
                answered.extend(response.results)
    assert [r.call_id for r in answered] == ["ok"] and not answered[0].is_error
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details() or ""
    assert "CallTools" in details and "did not decode" in details
    assert not any(name in details for name in EXCEPTION_NAMES), details
    assert problems(caplog) == []


async def test_rejected_requests_are_logged_once_each_at_most_and_rate_limited(
    client: ToolClient, caplog: pytest.LogCaptureFixture
) -> None:
    raw = client.channel.unary_unary(CALL_TOOL, request_serializer=lambda b: b,
                                     response_deserializer=tools_pb2.CallToolResponse.FromString)
    with caplog.at_level(logging.INFO):
        for _ in range(40):
            with pytest.raises(grpc.aio.AioRpcError):
                await raw(with_bad_utf8("name"), timeout=10)
    assert problems(caplog) == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert 1 <= len(warnings) <= 6   # the bucket's burst (5), and one more if a token refilled


async def test_a_long_message_is_clipped_to_fit_the_status_trailers(client: ToolClient) -> None:
    """A session id of 100 KB is echoed by the NOT_FOUND; unclipped it overflowed gRPC's metadata limit
    and the client read RESOURCE_EXHAUSTED 'received metadata size exceeds hard limit'."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.call_tool("list_tables", {}, session_id="s" * 100_000)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    details = info.value.details() or ""
    assert details.startswith("session 'sss") and "more characters" in details and len(details) < 2_000


# ---------------------------------------------------------------- an unexpected error

class CrashArgs(BaseModel):
    pass


class Crash:
    """A tool with a bug: it raises."""

    name = "test_crash"
    description = "Fails."
    Args = CrashArgs

    def __init__(self, ctx: ToolContext) -> None:
        self.ctx = ctx

    def validate_context(self, context: Any) -> None:
        """Any context."""

    async def call(self, args: CrashArgs, session: Session) -> ToolResult:
        raise RuntimeError("a bug in a tool")


@pytest.fixture
def crash_tool(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from tool_servers import registry

    monkeypatch.setattr(registry, "REGISTRY", dict(registry.REGISTRY))
    registry.register(Crash)
    yield


async def test_an_unexpected_error_is_unknown_without_exception_names_and_logged_rate_limited(
    crash_tool: None, start_tools: Any, make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    running = await start_tools(tools=("test_crash",))
    client: ToolClient = make_client(running, retry=NO_RETRY)
    with caplog.at_level(logging.INFO):
        for _ in range(20):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.call_tool("test_crash", {})
            assert info.value.code() == grpc.StatusCode.UNKNOWN
            details = info.value.details() or ""
            assert "unexpected error" in details
            assert not any(name in details for name in EXCEPTION_NAMES), details
        stream = client.stream()
        results = [await stream.call("test_crash", {}) for _ in range(20)]
        await stream.close()
    for result in results:
        assert result.system_error is not None and result.system_error.code == grpc.StatusCode.INTERNAL.value[0]
        assert "unexpected error" in result.system_error.message
        assert not any(name in result.system_error.message for name in EXCEPTION_NAMES)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    # one bucket for the unary calls, one for the stream's: each logs its burst of 5, then counts
    assert 2 <= len(errors) <= 12, [r.getMessage() for r in errors]
    assert all(r.exc_info for r in errors)   # what is logged keeps its traceback


# ---------------------------------------------------------------- the helpers


def test_rate_limited_log_keeps_a_burst_then_a_rate_and_counts_what_it_suppressed(
    caplog: pytest.LogCaptureFixture
) -> None:
    now = [0.0]
    log = RateLimitedLog(logging.getLogger("test.ratelog"), burst=3, per_s=0.5, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.ratelog"):
        logged = [log.warning("a", "bad request %d", i) for i in range(10)]
        assert logged == [True] * 3 + [False] * 7
        assert log.warning("b", "another kind")          # kinds have their own buckets
        now[0] = 1.0                                      # half a token: still nothing
        assert not log.warning("a", "bad request %d", 10)
        now[0] = 2.0                                      # one token
        assert log.warning("a", "bad request %d", 11)
        assert not log.warning("a", "bad request %d", 12)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["bad request 0", "bad request 1", "bad request 2", "another kind",
                        "bad request 11 [8 more suppressed]"]


def test_clip_keeps_short_text_and_says_how_much_it_cut() -> None:
    assert clip("short") == "short"
    assert clip("x" * 1500) == "x" * 1000 + "… (500 more characters)"
    assert clip("abcdef", 3) == "abc… (3 more characters)"
