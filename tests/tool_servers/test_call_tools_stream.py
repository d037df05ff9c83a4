"""The bidirectional ``CallTools`` stream, driven through the raw generated stub."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import pytest

from rlyard.client import ToolClient
from rlyard.common.v1 import common_pb2
from rlyard.domain import ToolResult
from rlyard.errors import DeadlineExceeded
from rlyard.tools.v1 import tools_pb2, tools_pb2_grpc


def req(
    call_id: str, name: str, arguments: dict[str, object] | str, *, session_id: str = "",
    context: dict[str, str] | None = None,
) -> tools_pb2.CallToolRequest:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return tools_pb2.CallToolRequest(
        session_id=session_id,
        call=common_pb2.ToolCall(call_id=call_id, name=name, arguments_json=args),
        context=context or {},
    )


async def test_many_calls_in_one_message_are_answered_by_call_id(client: ToolClient, session_id: str) -> None:
    stub = tools_pb2_grpc.ToolServiceStub(client.channel)
    call = stub.CallTools(timeout=10)
    await call.write(
        tools_pb2.CallToolsRequest(
            calls=[
                req("count", "sql_query", {"query": "SELECT count(*) FROM singer"}, session_id=session_id),
                req("tables", "list_tables", {}, session_id=session_id),
                req("ghost", "sql_query", {"query": "SELECT 1"}, session_id="no-such-session"),
                req("unknown-tool", "shell", {"cmd": "ls"}, session_id=session_id),
                req("one-off", "sql_query", {"query": "SELECT count(*) FROM Pets"}, context={"db_id": "pets_1"}),
                req("bad-db", "sql_query", {"query": "SELECT 1"}, context={"db_id": "../x"}),
                req("bad-json", "sql_query", "{query:", session_id=session_id),
            ]
        )
    )
    await call.done_writing()
    answered: list[common_pb2.ToolResult] = []
    async for response in call:
        answered.extend(response.results)
    assert await call.code() == grpc.StatusCode.OK

    ids = [r.call_id for r in answered]
    assert sorted(ids) == sorted(["count", "tables", "ghost", "unknown-tool", "one-off", "bad-db", "bad-json"])
    by_id = {r.call_id: r for r in answered}

    assert json.loads(by_id["count"].structured_json)["rows"] == [[6]]
    assert by_id["tables"].content[0].text.startswith("concert (6 rows)")
    assert json.loads(by_id["one-off"].structured_json)["rows"] == [[3]]
    for ok in ("count", "tables", "one-off"):
        assert not by_id[ok].is_error and by_id[ok].system_error.code == 0

    ghost = by_id["ghost"]
    assert ghost.system_error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert "no-such-session" in ghost.system_error.message
    assert (ghost.name, len(ghost.content), ghost.is_error) == ("sql_query", 0, False)
    assert by_id["bad-db"].system_error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]

    for model_error in ("unknown-tool", "bad-json"):
        assert by_id[model_error].is_error and by_id[model_error].system_error.code == 0


async def test_stream_stays_open_across_messages(client: ToolClient, session_id: str) -> None:
    stub = tools_pb2_grpc.ToolServiceStub(client.channel)
    call = stub.CallTools(timeout=10)
    for i in range(3):
        await call.write(
            tools_pb2.CallToolsRequest(
                calls=[req(f"m{i}", "sql_query", {"query": f"SELECT {i} * 7"}, session_id=session_id)]
            )
        )
        response = await asyncio.wait_for(call.read(), timeout=5)
        assert [r.call_id for r in response.results] == [f"m{i}"]
        assert json.loads(response.results[0].structured_json)["rows"] == [[i * 7]]
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_a_fast_call_is_answered_before_a_slow_one_of_the_same_message(
    client: ToolClient, session_id: str, endless_count_sql: str
) -> None:
    stub = tools_pb2_grpc.ToolServiceStub(client.channel)
    call = stub.CallTools(timeout=10)
    start = time.monotonic()
    await call.write(
        tools_pb2.CallToolsRequest(
            calls=[
                req("slow", "sql_query", {"query": endless_count_sql}, session_id=session_id),
                req("fast", "sql_query", {"query": "SELECT 1"}, session_id=session_id),
            ]
        )
    )
    await call.done_writing()
    arrivals: list[tuple[str, float]] = []
    async for response in call:
        arrivals += [(r.call_id, time.monotonic() - start) for r in response.results]
    assert [cid for cid, _ in arrivals] == ["fast", "slow"]
    fast_at, slow_at = arrivals[0][1], arrivals[1][1]
    assert slow_at > 1.0 and slow_at - fast_at > 0.5  # the slow one ran into the 1.5 s time limit


async def test_duplicate_and_empty_call_ids_are_refused_and_the_others_go_through(
    client: ToolClient, session_id: str, endless_count_sql: str
) -> None:
    """Results are matched by call_id: a message whose calls share one, or a call without one, would be
    answered ambiguously. Each such call gets system_error INVALID_ARGUMENT; so does a call that reuses
    the id of one still running on the stream; the rest run."""
    stub = tools_pb2_grpc.ToolServiceStub(client.channel)
    call = stub.CallTools(timeout=10)
    await call.write(tools_pb2.CallToolsRequest(calls=[
        req("twice", "sql_query", {"query": "SELECT 1"}, session_id=session_id),
        req("ok-1", "sql_query", {"query": "SELECT 2"}, session_id=session_id),
        req("twice", "sql_query", {"query": "SELECT 3"}, session_id=session_id),
        req("", "sql_query", {"query": "SELECT 4"}, session_id=session_id),
        req("slow", "sql_query", {"query": endless_count_sql}, session_id=session_id),
        req("x" * 2000, "sql_query", {"query": "SELECT 5"}, session_id=session_id),
    ]))
    answered: list[common_pb2.ToolResult] = []
    while len(answered) < 5:   # all but "slow"
        answered.extend((await asyncio.wait_for(call.read(), timeout=5)).results)
    await call.write(tools_pb2.CallToolsRequest(calls=[
        req("slow", "sql_query", {"query": "SELECT 6"}, session_id=session_id),   # the first is still running
        req("ok-2", "sql_query", {"query": "SELECT 7"}, session_id=session_id),
    ]))
    await call.done_writing()
    while (response := await asyncio.wait_for(call.read(), timeout=5)) is not grpc.aio.EOF:
        answered.extend(response.results)
    assert await call.code() == grpc.StatusCode.OK

    invalid = grpc.StatusCode.INVALID_ARGUMENT.value[0]
    refused = [r for r in answered if r.system_error.code == invalid]
    ran = [r for r in answered if r.system_error.code == 0]
    assert sorted(r.call_id for r in ran) == ["ok-1", "ok-2", "slow"]
    assert {r.call_id: json.loads(r.structured_json)["rows"] for r in ran if r.call_id != "slow"} == {
        "ok-1": [[2]], "ok-2": [[7]]}
    assert next(r for r in ran if r.call_id == "slow").is_error   # stopped by the time limit
    messages = sorted((r.call_id[:6], r.system_error.message) for r in refused)
    assert [m[0] for m in messages] == ["", "slow", "twice", "twice", "xxxxxx"]
    assert "needs a call_id" in messages[0][1]
    assert "'slow' is still running on this stream" in messages[1][1]
    assert "'twice' is used by 2 calls of one message" in messages[2][1] == messages[3][1]
    assert "the call_id is 2000 characters; at most 1024" in messages[4][1]
    assert max(len(r.call_id) for r in refused) < 100   # an overlong id is not echoed whole


async def test_an_overlong_call_id_is_invalid_argument_on_the_unary_call(client: ToolClient) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.call_tool("list_tables", {}, context={"db_id": "singer"}, call_id="c" * 1025)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the call_id is 1025 characters; at most 1024" in (info.value.details() or "")


async def test_a_mixed_batch_gives_each_call_its_own_outcome(
    client: ToolClient, session_id: str, endless_count_sql: str
) -> None:
    """One message (the client batches the calls of one tick) of a call past its deadline, a good
    query, a query the tool refuses and an unknown tool: their blocking work is handed to the pool
    as one batch, yet each gets its own outcome, and the slow call, first in the batch, holds up
    none of the others (it runs until the tool's 1.5 s limit)."""
    stream = client.stream()
    start = time.monotonic()
    answered_at: dict[str, float] = {}

    async def timed(name: str, tool: str, args: dict[str, object], timeout: float | None = None) -> object:
        try:
            return await stream.call(tool, args, session_id=session_id, timeout=timeout)
        except DeadlineExceeded as exc:
            return exc
        finally:
            answered_at[name] = time.monotonic() - start

    late, ok, refused, unknown = await asyncio.gather(
        timed("late", "sql_query", {"query": endless_count_sql}, timeout=0.3),
        timed("ok", "sql_query", {"query": "SELECT count(*) FROM singer"}),
        timed("refused", "sql_query", {"query": "SELECT nme FROM singer"}),
        timed("unknown", "shell", {"cmd": "ls"}),
    )
    assert isinstance(late, DeadlineExceeded) and "took longer than 0.3s" in str(late)
    assert isinstance(ok, ToolResult) and not ok.is_error and ok.structured["rows"] == [[6]]
    assert isinstance(refused, ToolResult) and refused.is_error and "nme" in refused.content[0].text
    assert refused.system_error is None
    assert isinstance(unknown, ToolResult) and unknown.is_error and "unknown tool 'shell'" in unknown.content[0].text
    assert 0.3 <= answered_at["late"] < 1.2
    assert max(answered_at[n] for n in ("ok", "refused", "unknown")) < 1.2   # not behind the slow call's 1.5 s
    again = await stream.call("sql_query", {"query": "SELECT 2 * 21"}, session_id=session_id)
    assert again.structured["rows"] == [[42]]       # the stream goes on
    await stream.close()


async def test_a_large_message_runs_in_groups_and_a_slow_call_holds_up_none(
    client: ToolClient, session_id: str, endless_count_sql: str
) -> None:
    """40 calls in one message are more than one group (``tool_servers.stream_calls``): half start,
    the rest wait for them. The first call runs into the tool's 1.5 s limit, yet the 39 others,
    those of the second group included, are answered long before it, each with its own rows; a
    call that reuses the id of a call still in hand (the slow one) is refused."""
    stub = tools_pb2_grpc.ToolServiceStub(client.channel)
    call = stub.CallTools(timeout=10)
    start = time.monotonic()
    await call.write(tools_pb2.CallToolsRequest(calls=[
        req("slow", "sql_query", {"query": endless_count_sql}, session_id=session_id),
        *(req(f"c{i}", "sql_query", {"query": f"SELECT {i} * 3"}, session_id=session_id) for i in range(1, 40)),
    ]))
    await call.write(tools_pb2.CallToolsRequest(calls=[req("slow", "sql_query", {"query": "SELECT 1"})]))
    await call.done_writing()
    answered: list[tuple[common_pb2.ToolResult, float]] = []
    async for response in call:
        answered += [(r, time.monotonic() - start) for r in response.results]
    assert await call.code() == grpc.StatusCode.OK
    fast = {r.call_id: (r, at) for r, at in answered if r.call_id.startswith("c")}
    assert sorted(fast) == sorted(f"c{i}" for i in range(1, 40))
    for i in range(1, 40):
        result, at = fast[f"c{i}"]
        assert json.loads(result.structured_json)["rows"] == [[i * 3]] and at < 1.0
    slow = [r for r, _ in answered if r.call_id == "slow"]
    assert len(slow) == 2
    refused, timed_out = sorted(slow, key=lambda r: r.system_error.code == 0)
    assert refused.system_error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "still running" in refused.system_error.message
    assert timed_out.system_error.code == 0 and timed_out.is_error
