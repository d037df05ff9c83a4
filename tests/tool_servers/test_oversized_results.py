"""Results that could outgrow a message (issue 19, 5): the exact inputs of the issue, and a name
long enough that echoing it twice (the result's name and its message) overflowed the message
limit and ended the whole ``CallTools`` stream. Default limits (16 MiB messages, 8 MiB of rows)."""

from __future__ import annotations

import asyncio
import json

import grpc

from rlyard.client import ToolClient
from rlyard.common.v1 import common_pb2
from rlyard.tools.v1 import tools_pb2

# 8 rows of 999,998 characters char(1): 8 MB of rows that serialise to 48 MB of JSON (\u0001)
WIDE_ROWS = ("WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM r WHERE i<8) "
             "SELECT replace(hex(zeroblob(499999)),'0',char(1)) FROM r")
MESSAGE_LIMIT = 16 * 1024 * 1024


async def test_the_wide_rows_query_is_capped_and_its_neighbours_are_answered(
    client: ToolClient, session_id: str
) -> None:
    stream = client.stream()
    queries = [WIDE_ROWS, "SELECT count(*) FROM singer", WIDE_ROWS, "SELECT name FROM singer WHERE age > 40",
               "SELECT 6 * 7"]
    results = await asyncio.gather(*(stream.call("sql_query", {"query": q}, session_id=session_id) for q in queries))
    await stream.close()
    for wide in (results[0], results[2]):
        assert not wide.is_error and wide.system_error is None
        assert wide.structured["truncated"] and wide.structured["row_count"] == 1   # one row of 6 MB fits 8 MiB
        assert len(json.dumps(wide.structured)) < 8 * 1024 * 1024
    assert results[1].structured["rows"] == [[6]]
    assert results[3].structured["row_count"] >= 1
    assert results[4].structured["rows"] == [[42]]


async def test_many_unknown_tools_with_long_names_get_small_results(client: ToolClient, session_id: str) -> None:
    """120 unknown-tool calls with 100 KB names and one good call: 121 results, none echoing a name."""
    call = client.stub.CallTools(timeout=30)
    reqs = [tools_pb2.CallToolRequest(session_id=session_id, call=common_pb2.ToolCall(
        call_id=f"u{i}", name="x" * 100_000, arguments_json="{}")) for i in range(120)]
    reqs.append(tools_pb2.CallToolRequest(session_id=session_id, call=common_pb2.ToolCall(
        call_id="good", name="sql_query", arguments_json='{"query": "SELECT 1"}')))
    await call.write(tools_pb2.CallToolsRequest(calls=reqs))
    await call.done_writing()
    messages = [response async for response in call]
    assert await call.code() == grpc.StatusCode.OK
    results = {r.call_id: r for m in messages for r in m.results}
    assert len(results) == 121 and not results["good"].is_error
    for i in range(120):
        r = results[f"u{i}"]
        assert r.is_error and "unknown tool 'xxxx" in r.content[0].text and "available tools" in r.content[0].text
        assert r.ByteSize() < 1_000
    assert sum(m.ByteSize() for m in messages) < 200_000


async def test_a_name_too_long_to_echo_twice_does_not_end_the_stream(client: ToolClient, session_id: str) -> None:
    """A 9 MB name fits a request; echoed as the result's name and in its message it made an 18 MB
    answer, over the limit: the refusal echoed it again and gRPC ended the stream for every call."""
    stream = client.stream()
    long_name = "t" * 9_000_000
    results = await asyncio.gather(
        stream.call(long_name, {}, session_id=session_id),
        *(stream.call("sql_query", {"query": f"SELECT {i}"}, session_id=session_id) for i in range(4)),
    )
    await stream.close()
    odd = results[0]
    assert odd.is_error and odd.system_error is None and "unknown tool 'tttt" in odd.first_text
    assert len(odd.name) < 100 and len(odd.first_text) < 1_000
    assert [r.structured["rows"] for r in results[1:]] == [[[i]] for i in range(4)]
    # the unary call answers it the same way
    unary = await client.call_tool(long_name, {}, session_id=session_id)
    assert unary.is_error and len(unary.name) < 100 and len(unary.first_text) < 1_000
