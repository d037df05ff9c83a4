"""Requests over the message limit (issue 19, 6): the client refuses the one call that cannot fit
before sending it, with a ``RequestTooLarge`` that says the size and the limit, and a stream splits
a batch that would not fit one message into several. Against a real tool server, default limits."""

from __future__ import annotations

import asyncio
import re

import grpc
import pytest

from rlyard.client import DEFAULT_MAX_MESSAGE_BYTES, ToolClient, split_calls
from rlyard.common.v1 import common_pb2
from rlyard.domain import ImagePart
from rlyard.errors import RequestTooLarge, ResourceExhausted
from rlyard.tools.v1 import tools_pb2

HUGE = "x" * (17 * 1024 * 1024)   # the 17 MB call


async def test_one_oversized_call_is_refused_and_the_calls_of_its_tick_go_through(
    client: ToolClient, session_id: str
) -> None:
    stream = client.stream()
    calls = [stream.call("sql_query", {"query": f"SELECT {i}"}, session_id=session_id) for i in range(2)]
    calls.append(stream.call("sql_query", {"query": HUGE}, session_id=session_id))
    calls += [stream.call("sql_query", {"query": f"SELECT {i}"}, session_id=session_id) for i in range(2, 4)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    await stream.close()
    refused = results.pop(2)
    assert isinstance(refused, RequestTooLarge) and isinstance(refused, ResourceExhausted)
    assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "tool call 'sql_query'" in refused.message
    assert f"limit of {DEFAULT_MAX_MESSAGE_BYTES} bytes" in refused.message
    assert re.search(r"is 178\d{5} bytes, over the message limit", refused.message), refused.message
    for i, result in enumerate(results):
        assert not isinstance(result, BaseException), result
        assert result.structured["rows"] == [[i]]


async def test_a_batch_over_the_limit_travels_in_several_messages(client: ToolClient, session_id: str) -> None:
    """Four 5 MB calls and a small one in one tick: 20 MB, over the 16 MiB limit as one message."""
    stream = client.stream()
    sent: list[int] = []
    send = stream._send

    async def counting(calls: list[tools_pb2.CallToolRequest]) -> None:
        sent.append(len(calls))
        await send(calls)

    stream._send = counting  # type: ignore[method-assign]
    big = "y" * (5 * 1024 * 1024)
    results = await asyncio.gather(
        *(stream.call("sql_query", {"query": big}, session_id=session_id) for _ in range(4)),
        stream.call("sql_query", {"query": "SELECT 42"}, session_id=session_id),
    )
    await stream.close()
    assert sum(sent) == 5 and len(sent) >= 2
    for result in results[:4]:   # answered: the executor refuses arguments over 1,000,000 characters
        assert result.is_error and "the limit is 1000000" in result.first_text
    assert results[4].structured["rows"] == [[42]]


async def test_the_unary_calls_refuse_an_oversized_request_before_sending(client: ToolClient) -> None:
    with pytest.raises(RequestTooLarge) as info:
        await client.call_tool("sql_query", {"query": HUGE}, context={"db_id": "singer"})
    assert "over the message limit of 16777216 bytes" in info.value.message
    image = ImagePart(b"\0" * (17 * 1024 * 1024), "image/png", 1, 1, "big")
    with pytest.raises(RequestTooLarge) as info:
        await client.open_session({"db_id": "singer"}, attachments=[image])
    assert "the OpenSession request is" in info.value.message


def test_split_calls_keeps_order_and_each_message_under_the_limit() -> None:
    calls = [tools_pb2.CallToolRequest(call=common_pb2.ToolCall(call_id=f"c{i}", arguments_json="z" * 300))
             for i in range(10)]
    groups = split_calls(calls, 1000)
    assert [c.call.call_id for g in groups for c in g] == [f"c{i}" for i in range(10)]
    assert all(tools_pb2.CallToolsRequest(calls=g).ByteSize() <= 1000 for g in groups)
    assert len(groups) == 4   # three ~310-byte calls fit 1000 bytes, four do not
    assert split_calls([], 1000) == []
