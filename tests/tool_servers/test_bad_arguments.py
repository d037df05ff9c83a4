"""Arguments the JSON parser cannot take (issue 19): nested too deep (RecursionError) or with a
number too long (ValueError past 4,300 digits) are the model's mistakes, answered with an
``is_error`` result that says what to fix, over ``CallTool`` and ``CallTools`` alike, and logged
at most at WARNING."""

from __future__ import annotations

import logging

import pytest

from rlyard.client import ToolClient
from tool_servers.executor import MAX_JSON_DEPTH, MAX_NUMBER_CHARS, depth_over_limit, parse_arguments

DEEP_ARRAY = "[" * 1000 + "]" * 1000                       # the input
DEEP_VALUE = '{"query": ' + "[" * 500 + "]" * 500 + "}"
LONG_INT = '{"query": ' + "1" * 4301 + "}"                   # the 4,301 digits
LONG_FLOAT = '{"query": 0.' + "5" * 5000 + "}"

CASES = [
    (DEEP_ARRAY, "nest arrays and objects 1000 levels deep; at most 32 levels"),
    (DEEP_VALUE, "nest arrays and objects 501 levels deep"),
    (LONG_INT, "hold a number of 4301 characters; a number may have at most 100 characters"),
    (LONG_FLOAT, "hold a number of 5002 characters"),
]
EXCEPTION_NAMES = ("RecursionError", "ValueError", "Traceback", "<class", "recursion depth", "sys.set_int_max")


@pytest.mark.parametrize(("arguments", "says"), CASES, ids=["deep-array", "deep-value", "long-int", "long-float"])
async def test_unparseable_arguments_are_a_model_error_over_the_unary_call(
    arguments: str, says: str, client: ToolClient, session_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        result = await client.call_tool("sql_query", arguments, session_id=session_id)
    assert result.is_error and result.system_error is None
    assert says in result.first_text and "sql_query" in result.first_text
    assert not any(name in result.first_text for name in EXCEPTION_NAMES), result.first_text
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_unparseable_arguments_are_model_errors_in_the_stream_beside_a_good_call(
    client: ToolClient, session_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    stream = client.stream()
    with caplog.at_level(logging.INFO):
        results = [await stream.call("sql_query", arguments, session_id=session_id) for arguments, _ in CASES]
        good = await stream.call("sql_query", {"query": "SELECT count(*) FROM singer"}, session_id=session_id)
    await stream.close()
    for result, (_, says) in zip(results, CASES, strict=True):
        assert result.is_error and result.system_error is None, result
        assert says in result.first_text
    assert not good.is_error and good.structured["rows"] == [[6]]
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_the_depth_check_counts_brackets_outside_strings_only() -> None:
    at_limit = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert depth_over_limit(at_limit) == 0
    assert depth_over_limit("[" + at_limit + "]") == MAX_JSON_DEPTH + 1
    in_strings = '{"a": "' + "[" * 200 + '", "b": "\\"{{{{' + "{" * 100 + '"}'
    assert depth_over_limit(in_strings) == 0
    assert parse_arguments("t", in_strings)[0]["a"] == "[" * 200
    many_but_flat = "[" + ",".join(["[1]"] * 500) + "]"          # 501 brackets, depth 2
    assert depth_over_limit(many_but_flat) == 0
    assert parse_arguments("t", '{"n": ' + "9" * MAX_NUMBER_CHARS + "}") == ({"n": int("9" * MAX_NUMBER_CHARS)}, None)
    assert parse_arguments("t", '{"x": 1.5e3, "y": -2}') == ({"x": 1500.0, "y": -2}, None)
    assert parse_arguments("t", "  ") == ({}, None)
