"""Fuzz of the tool server (issue 19): random ``CallTool``, ``CallTools`` and ``OpenSession``
requests (odd names and call_ids, arguments nested deep, with huge numbers, big strings or
invalid UTF-8, contexts and idle timeouts of every kind) against one real server. Whatever comes
in, no answer is UNKNOWN or INTERNAL, no message names a Python exception, and the server answers a
plain call afterwards. Bounded to a few seconds: ``derandomize`` keeps the examples the same on
every run (``bench/fuzz.py`` explores at random, 10⁵ requests)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlyard.client import DEFAULT_MAX_MESSAGE_BYTES, NO_RETRY, ToolClient
from rlyard.common.v1 import common_pb2
from rlyard.server import RunningServer
from rlyard.tools.v1 import tools_pb2

UNCLEAR_CODES = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
EXCEPTION_NAMES = ("RecursionError", "ValueError", "DecodeError", "TypeError", "KeyError", "AttributeError",
                   "UnicodeEncodeError", "Traceback", "<class", "Exception")
TOOLS = ["sql_query", "list_tables", "describe_table"]
DB_IDS = ["concert_singer", "pets_1", "singer", "no_such_db", "../x", "concert_singer\n", ""]
MARK = "QQQQ"   # a field holding it is sent as invalid UTF-8 instead

text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=40)   # protobuf strings are UTF-8
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4), max_leaves=12)
arguments = st.one_of(
    text,
    st.dictionaries(text, json_values, max_size=4).map(json.dumps),
    st.sampled_from(["SELECT count(*) FROM singer", "SELECT * FROM nope", "DROP TABLE singer", "", ";",
                     "SELECT printf('%.*c', 2000000, 'x')", "singer"]).map(lambda q: json.dumps({"query": q})),
    st.builds(lambda t: json.dumps({"table": t}), st.sampled_from(["singer", "concert", "nope"]) | text),
    st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 3000).map(lambda n: '{"query": ' + "[" * n + "]" * n + "}"),
    st.integers(90, 6000).map(lambda n: '{"query": ' + "7" * n + "}"),
    st.integers(90, 6000).map(lambda n: '{"query": 1.' + "5" * n + "e5}"),
    st.integers(0, 2_000_000).map(lambda n: json.dumps({"query": "SELECT '" + "a" * n + "'"})),
    st.just(MARK),
)
names = st.one_of(st.sampled_from(TOOLS), text, st.integers(1, 300_000).map(lambda n: "n" * n), st.just(MARK))
call_ids = st.one_of(text, st.integers(1000, 5000).map(lambda n: "c" * n), st.just(MARK))
contexts = st.one_of(
    st.sampled_from(DB_IDS).map(lambda d: {"db_id": d}),
    st.dictionaries(text, text, max_size=20),
    st.builds(lambda d, k, v: {"db_id": d, k: v}, st.sampled_from(DB_IDS), text | st.just("k" * 100_000),
              text | st.just("v" * 100_000)),
    st.just({"db_id": "concert_singer", "purpose": "verification"}),
)
idle_timeouts = st.one_of(st.floats(), st.sampled_from([0.0, math.inf, -math.inf, math.nan, 1e308, -1.0, 5.0]))


@dataclass
class Call:
    call_id: str
    name: str
    arguments_json: str
    context: dict[str, str]
    session: bool             # in the example's session, if one opened; else one-off with the context

    def request(self, session_id: str) -> tools_pb2.CallToolRequest:
        return tools_pb2.CallToolRequest(
            session_id=session_id if self.session else "",
            call=common_pb2.ToolCall(call_id=self.call_id, name=self.name, arguments_json=self.arguments_json),
            context=self.context)


calls = st.builds(Call, call_ids, names, arguments, contexts, st.booleans())


def encoded(message: Any) -> bytes:
    """``message`` serialised, with every ``MARK`` turned into bytes that are not UTF-8."""
    return message.SerializeToString().replace(MARK.encode(), b"\xff\xfe\x80\xc0")


def check_message(message: str) -> None:
    assert not any(name in message for name in EXCEPTION_NAMES), message[:500]


def check_error(exc: grpc.aio.AioRpcError) -> None:
    assert exc.code() not in UNCLEAR_CODES, (exc.code(), (exc.details() or "")[:500])
    check_message(exc.details() or "")


def check_result(result: common_pb2.ToolResult) -> None:
    assert result.system_error.code not in {c.value[0] for c in UNCLEAR_CODES}, result.system_error
    check_message(result.system_error.message)
    for part in result.content:
        check_message(part.text)


@pytest.fixture
async def fuzz_client(start_tools: Any, make_client: Any) -> ToolClient:
    running: RunningServer = await start_tools(max_sessions=50)
    client: ToolClient = make_client(running, retry=NO_RETRY, timeout=20.0)
    return client


async def unary(client: ToolClient, method: str, data: bytes, reply: Any) -> Any:
    raw = client.channel.unary_unary(f"/rlyard.tools.v1.ToolService/{method}", request_serializer=lambda b: b,
                                     response_deserializer=reply.FromString)
    try:
        return await raw(data, timeout=20)
    except grpc.aio.AioRpcError as exc:
        check_error(exc)
        return None


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(context=contexts, idle=idle_timeouts, session_id=st.one_of(st.just(""), text, st.just("s" * 300)),
       batch=st.lists(calls, max_size=6), one=calls)
async def test_no_request_gets_an_unclear_answer(
    fuzz_client: ToolClient, context: dict[str, str], idle: float, session_id: str, batch: list[Call], one: Call
) -> None:
    client = fuzz_client
    opened = await unary(client, "OpenSession", encoded(tools_pb2.OpenSessionRequest(
        session_id=session_id, context=context, idle_timeout_s=idle)), tools_pb2.OpenSessionResponse)
    sid = opened.session_id if opened is not None else "no-session"
    try:
        answer = await unary(client, "CallTool", encoded(one.request(sid)), tools_pb2.CallToolResponse)
        if answer is not None:
            check_result(answer.result)
        stream = client.channel.stream_stream("/rlyard.tools.v1.ToolService/CallTools", request_serializer=lambda b: b,
                                              response_deserializer=tools_pb2.CallToolsResponse.FromString)
        call = stream(timeout=20)
        message = tools_pb2.CallToolsRequest(calls=[c.request(sid) for c in batch])
        if message.ByteSize() <= DEFAULT_MAX_MESSAGE_BYTES:   # ToolStream splits; this raw stream does not
            await call.write(encoded(message))
        after = "after-" + "z" * 50   # longer than any fuzzed call_id: the stream goes on past the batch
        await call.write(tools_pb2.CallToolsRequest(calls=[tools_pb2.CallToolRequest(
            call=common_pb2.ToolCall(call_id=after, name="sql_query", arguments_json='{"query": "SELECT 1"}'),
            context={"db_id": "concert_singer"})]).SerializeToString())
        await call.done_writing()
        answered = []
        async for response in call:
            for result in response.results:
                check_result(result)
                answered.append(result.call_id)
        assert await call.code() == grpc.StatusCode.OK
        assert after in answered
    finally:
        if opened is not None:
            await client.close_session(opened.session_id)
    plain = await client.call_tool("sql_query", {"query": "SELECT 1"}, context={"db_id": "concert_singer"})
    assert plain.structured["rows"] == [[1]]
