"""Reading the calls of a ``CallToolsRequest`` that does not decode as a whole, from its wire bytes."""

from __future__ import annotations

import random

from rlyard.common.v1 import common_pb2
from rlyard.tools.v1 import tools_pb2
from tool_servers.salvage import salvage


def call(call_id: str, arguments: str = "{}") -> tools_pb2.CallToolRequest:
    tool_call = common_pb2.ToolCall(call_id=call_id, name="list_tables", arguments_json=arguments)
    return tools_pb2.CallToolRequest(session_id="s", context={"db_id": "singer"}, call=tool_call)


def spoiled(message: tools_pb2.CallToolsRequest) -> bytes:
    return message.SerializeToString().replace(b"QQQQ", b"\xff\xfe\x80\xc0")


def test_the_calls_that_decode_are_kept_and_the_others_known_by_call_id() -> None:
    message = tools_pb2.CallToolsRequest(calls=[call("a"), call("b", "QQQQ"), call("QQQQ"), call("c"), call("")])
    data = spoiled(message)
    got = salvage(data)
    assert [c.call.call_id for c in got.calls] == ["a", "c", ""]
    assert got.calls[0] == call("a")
    assert [cid for cid, _ in got.undecodable] == ["b"] and "UTF-8" in got.undecodable[0][1]
    assert got.lost == 1   # its call_id itself is not UTF-8


def test_a_whole_message_is_read_the_same_as_protobuf_reads_it() -> None:
    arguments = '{"query": "SELECT ' + "x" * 300 + '"}'
    message = tools_pb2.CallToolsRequest(calls=[call(f"c{i}", arguments) for i in range(5)])
    got = salvage(message.SerializeToString())
    assert list(got.calls) == list(message.calls) and got.undecodable == [] and got.lost == 0


def test_garbage_and_truncated_bytes_never_raise() -> None:
    rng = random.Random(7)
    data = spoiled(tools_pb2.CallToolsRequest(calls=[call("a"), call("b", "QQQQ"), call("c")]))
    for cut in range(len(data)):
        got = salvage(data[:cut])
        assert len(got.calls) + len(got.undecodable) + got.lost <= 3 + 1
    for _ in range(500):
        salvage(rng.randbytes(rng.randint(0, 300)))
    assert salvage(b"\x0b\x0c").lost == 1   # a group wire type: given up
