"""``ToolResult`` ↔ ``common.v1.ToolResult``: the result written in place (as a stream's response
is filled) is the same message as the one built alone, and reads back as the same result."""

from __future__ import annotations

import json

from rlyard.common.v1 import common_pb2
from rlyard.domain import ImagePart, JsonPart, SystemFailure, TextPart, ToolResult, convert
from rlyard.tools.v1 import tools_pb2

PNG_1x1 = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000")   # header is enough here


def _results() -> list[ToolResult]:
    return [
        ToolResult.of_text("2 rows", structured={"rows": [[1, b"\x00\xff"], [2, None]], "note": "é"}, truncated=True
                           ).answering("c1", "sql_query", 1.25),
        ToolResult(content=(TextPart("a"), JsonPart({"k": [1, 2]}),
                            ImagePart(PNG_1x1, "image/png", 1, 1, "img-1"))).answering("c2", "crop", 0.5),
        ToolResult.error("unknown tool 'x'").answering("c3", "x", 0.0),
        ToolResult(content=(), system_error=SystemFailure(5, "no such session")).answering("c4", "sql_query", 0.0),
        ToolResult(content=(), system_error=SystemFailure(0, "")).answering("c5", "t", 0.0),
    ]


def test_a_result_written_in_place_equals_the_one_built_alone_and_reads_back() -> None:
    response = tools_pb2.CallToolsResponse()
    for result in _results():
        convert.tool_result_into_pb(result, response.results.add())
    alone = [convert.tool_result_to_pb(r) for r in _results()]
    assert list(response.results) == alone
    assert [convert.tool_result_from_pb(pb) for pb in response.results] == [
        convert.tool_result_from_pb(pb) for pb in alone]
    first = response.results[0]
    assert json.loads(first.structured_json) == {"rows": [[1, {"$blob_hex": "00ff"}], [2, None]], "note": "é"}
    assert first.structured_json == json.dumps(_results()[0].structured, default=lambda b: {"$blob_hex": b.hex()})
    assert (first.call_id, first.name, first.latency_ms, first.truncated) == ("c1", "sql_query", 1.25, True)
    kinds = [c.WhichOneof("kind") for c in response.results[1].content]
    assert kinds == ["text", "json", "image"] and response.results[1].content[2].image.image_id == "img-1"
    assert response.results[2].is_error and not response.results[2].HasField("system_error")
    assert response.results[3].system_error == common_pb2.ErrorStatus(code=5, message="no such session")
    assert response.results[4].HasField("system_error")   # set, as CopyFrom set it, even when empty
    assert not response.results[0].HasField("system_error") and response.results[0].structured_json
    assert response.results[2].structured_json == ""        # no structured data: the field stays empty


def test_structured_data_is_encoded_as_json_dumps_encodes_it() -> None:
    """The encoder built once writes the same text as ``json.dumps(x, default=to_jsonable)``."""
    from decimal import Decimal

    from rlyard.domain.content import to_jsonable

    values = [
        {"columns": ["a", "b"], "rows": [[1, 2.5], [None, "é\n\"x\""], [float("nan"), -0.0]], "more": True},
        [1e300, 1.0 / 3, b"\x01", Decimal("1.10"), {"nested": {"k": [[], {}]}}],
        "plain", 7,
    ]
    for value in values:
        pb = common_pb2.ToolResult()
        convert.tool_result_into_pb(ToolResult.of_text("t", structured=value), pb)
        assert pb.structured_json == json.dumps(value, default=to_jsonable)
