"""Every behaviour of the SQL tools, through a real server over real SQLite files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import pytest

from rlyard.client import ToolClient
from rlyard.common.v1 import common_pb2
from rlyard.domain import TextPart
from tool_servers.sql.db import row_json_bytes, to_jsonable
from tool_servers.sql.describe_table import DescribeTableArgs
from tool_servers.sql.list_tables import ListTablesArgs
from tool_servers.sql.sql_query import SqlQueryArgs


def text(result: common_pb2.ToolResult) -> str:
    assert len(result.content) == 1 and isinstance(result.content[0], TextPart), result
    return result.content[0].text


def structured(result: common_pb2.ToolResult) -> Any:
    return result.structured


# ---------------------------------------------------------------- list_tables


async def test_list_tables_names_tables_row_counts_and_columns(client: ToolClient, session_id: str) -> None:
    result = await client.call_tool("list_tables", {}, session_id=session_id, call_id="lt-1")
    assert (result.call_id, result.name, result.is_error) == ("lt-1", "list_tables", False)
    assert text(result) == (
        "concert (6 rows): concert_ID, concert_Name, Theme, Stadium_ID, Year\n"
        "singer (6 rows): Singer_ID, Name, Country, Song_Name, Song_release_year, Age, Is_male\n"
        "singer_in_concert (10 rows): concert_ID, Singer_ID\n"
        "stadium (9 rows): Stadium_ID, Location, Name, Capacity, Highest, Lowest, Average"
    )
    tables = {t["name"]: t for t in structured(result)["tables"]}
    assert tables["singer_in_concert"] == {
        "name": "singer_in_concert", "row_count": 10, "columns": ["concert_ID", "Singer_ID"],
    }
    assert [tables[n]["row_count"] for n in ("concert", "singer", "stadium")] == [6, 6, 9]
    assert result.latency_ms > 0


async def test_list_tables_accepts_empty_arguments_text(client: ToolClient, session_id: str) -> None:
    # An empty arguments string means "no arguments", the common form for a tool without any.
    result = await client.call_tool("list_tables", "", session_id=session_id)
    assert not result.is_error
    assert len(structured(result)["tables"]) == 4


# ---------------------------------------------------------------- describe_table


async def test_describe_table_shows_types_keys_foreign_keys_and_samples(
    client: ToolClient, session_id: str
) -> None:
    result = await client.call_tool("describe_table", {"table": "singer_in_concert"}, session_id=session_id)
    assert not result.is_error
    assert text(result) == (
        "table singer_in_concert (10 rows)\n"
        "columns:\n"
        "  concert_ID INTEGER PRIMARY KEY\n"
        "  Singer_ID TEXT PRIMARY KEY\n"
        "foreign keys:\n"
        "  (concert_ID) -> concert(concert_ID)\n"
        "  (Singer_ID) -> singer(Singer_ID)\n"
        "sample rows:\n"
        "concert_ID | Singer_ID\n"
        "1 | 2\n"
        "1 | 3\n"
        "1 | 5"
    )
    data = structured(result)
    assert data["table"] == "singer_in_concert" and data["row_count"] == 10
    assert [c["name"] for c in data["columns"] if c["primary_key"]] == ["concert_ID", "Singer_ID"]
    assert data["foreign_keys"] == [
        {"columns": ["concert_ID"], "ref_table": "concert", "ref_columns": ["concert_ID"]},
        {"columns": ["Singer_ID"], "ref_table": "singer", "ref_columns": ["Singer_ID"]},
    ]
    assert data["sample"]["rows"] == [[1, "2"], [1, "3"], [1, "5"]]


async def test_describe_table_resolves_names_case_insensitively(client: ToolClient, session_id: str) -> None:
    result = await client.call_tool("describe_table", {"table": "SINGER"}, session_id=session_id)
    assert not result.is_error
    assert text(result).startswith("table singer (6 rows)\ncolumns:\n  Singer_ID INTEGER PRIMARY KEY\n")
    assert "foreign keys:" not in text(result)  # singer references nothing


async def test_describe_unknown_table_is_an_error_listing_the_tables(
    client: ToolClient, session_id: str
) -> None:
    result = await client.call_tool("describe_table", {"table": "singers"}, session_id=session_id)
    assert result.is_error
    assert text(result) == (
        "no table named 'singers'; the tables are: concert, singer, singer_in_concert, stadium"
    )
    assert result.structured is None


async def test_describe_table_marks_not_null_and_samples_blobs(
    start_tools: Any, make_client: Any, blob_db_dir: Path
) -> None:
    client = make_client(await start_tools(sql={"db_dir": blob_db_dir, "describe_sample_rows": 2}))
    result = await client.call_tool("describe_table", {"table": "item"}, context={"db_id": "blobs"})
    assert not result.is_error
    assert text(result) == (
        "table item (25 rows)\n"
        "columns:\n"
        "  id INTEGER PRIMARY KEY\n"
        "  data BLOB\n"
        "  score REAL\n"
        "  note TEXT NOT NULL\n"
        "sample rows:\n"
        "id | data | score | note\n"
        "1 | <blob 2 bytes> | 0.25 | n1\n"
        "2 | <blob 2 bytes> | NULL | a/b c"
    )
    assert structured(result)["sample"]["rows"][0] == [1, {"$blob_hex": "01fe"}, 0.25, "n1"]


# ---------------------------------------------------------------- sql_query


async def test_sql_query_renders_a_compact_table_and_structured_rows(
    client: ToolClient, session_id: str
) -> None:
    result = await client.call_tool(
        "sql_query",
        {"query": "SELECT Name, Age FROM singer WHERE Country = 'France' ORDER BY Age"},
        session_id=session_id,
    )
    assert not result.is_error and not result.truncated
    assert text(result) == (
        "Name | Age\nTribal King | 25\nJustin Brown | 29\nRose White | 41\nJohn Nizinik | 43"
    )
    assert structured(result) == {
        "columns": ["Name", "Age"],
        "rows": [["Tribal King", 25], ["Justin Brown", 29], ["Rose White", 41], ["John Nizinik", 43]],
        "row_count": 4,
        "more_rows": 0,
        "more_rows_exact": True,
        "truncated": False,
    }


async def test_sql_query_with_no_rows_says_so(client: ToolClient, session_id: str) -> None:
    result = await client.call_tool(
        "sql_query", {"query": "SELECT Name FROM singer WHERE Age > 100"}, session_id=session_id
    )
    assert not result.is_error
    assert text(result) == "Name\n(no rows)"
    assert structured(result)["rows"] == []


async def test_sql_query_shows_display_rows_and_marks_the_rest(
    start_tools: Any, make_client: Any
) -> None:
    # The model reads 3 rows and an explicit marker; the reward still gets all 6 rows.
    client = make_client(await start_tools(sql={"display_rows": 3}))
    result = await client.call_tool(
        "sql_query", {"query": "SELECT Singer_ID, Name FROM singer ORDER BY Singer_ID"},
        context={"db_id": "concert_singer"},
    )
    assert text(result) == (
        "Singer_ID | Name\n1 | Joe Sharp\n2 | Timbaland\n3 | Justin Brown\n… 3 more rows (3 of 6 shown)"
    )
    assert structured(result)["row_count"] == 6
    assert result.truncated  # the text hides rows…
    assert not structured(result)["truncated"]  # …but every row reached the structured result


async def test_sql_query_row_cap_truncates_and_counts_the_rest(start_tools: Any, make_client: Any) -> None:
    client = make_client(await start_tools(sql={"max_rows": 2}))
    result = await client.call_tool(
        "sql_query", {"query": "SELECT Name FROM singer ORDER BY Singer_ID"}, context={"db_id": "concert_singer"}
    )
    assert not result.is_error and result.truncated
    assert text(result) == "Name\nJoe Sharp\nTimbaland\n… 4 more rows (2 of 6 shown)"
    data = structured(result)
    assert data["rows"] == [["Joe Sharp"], ["Timbaland"]]
    assert (data["more_rows"], data["more_rows_exact"], data["truncated"]) == (4, True, True)


async def test_verification_calls_get_their_own_caps_and_model_calls_keep_theirs(
    start_tools: Any, make_client: Any
) -> None:
    client = make_client(await start_tools(sql={"max_rows": 2, "verify_max_rows": 4}))
    query = {"query": "SELECT Name FROM singer ORDER BY Singer_ID"}
    verify = await client.call_tool("sql_query", query, context={"db_id": "concert_singer", "purpose": "verification"})
    data = structured(verify)
    assert data["row_count"] == 4 and (data["more_rows"], data["truncated"]) == (2, True)
    assert text(verify) == "Name\nJoe Sharp\nTimbaland\nJustin Brown\nRose White\n… 2 more rows (4 of 6 shown)"
    one_off = await client.call_tool("sql_query", query, context={"db_id": "concert_singer"})
    session_id = await client.open_session({"db_id": "concert_singer"})
    in_session = await client.call_tool("sql_query", query, session_id=session_id)
    for result in (one_off, in_session):
        assert (structured(result)["row_count"], structured(result)["more_rows"]) == (2, 4)


async def test_a_context_purpose_is_only_for_one_off_calls_and_only_verification(client: ToolClient) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.open_session({"db_id": "concert_singer", "purpose": "verification"})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'purpose' is for one-off calls" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.call_tool("sql_query", {"query": "SELECT 1"}, context={"db_id": "concert_singer", "purpose": "x"})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown purpose 'x'" in (err.value.details() or "")


async def test_the_byte_cap_counts_rows_as_json(start_tools: Any, make_client: Any) -> None:
    # 'é' is 1 character, 6 bytes of JSON ("\u00e9"): the cap counts what travels
    rows = [["é" * 100, 1.5, None], ["\"x\"", -(2**63), b"\x00\xff"]]
    assert [row_json_bytes(r) for r in rows] == [len(json.dumps(r, default=to_jsonable)) + 2 for r in rows]
    assert sum(row_json_bytes(r) for r in rows) == len(json.dumps(rows, default=to_jsonable))  # with "[", "]"
    per_row = row_json_bytes(["é" * 100])
    client = make_client(await start_tools(sql={"max_bytes": 3 * per_row}))
    query = {"query": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 10) "
                      "SELECT printf('%!.100c', 'é') FROM c"}
    result = await client.call_tool("sql_query", query, context={"db_id": "concert_singer"})
    assert (structured(result)["row_count"], structured(result)["more_rows"]) == (3, 7)


async def test_sql_query_count_limit_gives_an_inexact_marker(
    client: ToolClient, session_id: str
) -> None:
    # 10,000 rows kept, the rest counted up to the count limit: "more than N".
    result = await client.call_tool(
        "sql_query",
        {"query": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c"},
        session_id=session_id,
    )
    assert not result.is_error and result.truncated
    data = structured(result)
    assert data["row_count"] == 10_000 and data["rows"][-1] == [10_000]
    assert data["more_rows_exact"] is False and data["more_rows"] >= 100_000
    last = text(result).splitlines()[-1]
    assert last == f"… more than {data['more_rows'] + 9_980} more rows (20 of over {data['more_rows'] + 10_000} shown)"


async def test_sql_query_cuts_cells_and_the_whole_text_to_their_caps(start_tools: Any, make_client: Any) -> None:
    client = make_client(await start_tools(sql={"display_cell_chars": 5, "display_max_chars": 39}))
    result = await client.call_tool(
        "sql_query", {"query": "SELECT Name FROM singer ORDER BY Singer_ID"}, context={"db_id": "concert_singer"}
    )
    # the header takes 4 characters and each row 5 + 1 (newline): five rows fit in 39
    assert text(result) == "Name\nJoe …\nTimb…\nJust…\nRose…\nJohn…\n… 1 more row (5 of 6 shown)"
    assert structured(result)["rows"][0] == ["Joe Sharp"]  # structured rows are never cut


async def test_sql_query_encodes_blobs_for_rewards(start_tools: Any, make_client: Any, blob_db_dir: Path) -> None:
    client = make_client(await start_tools(sql={"db_dir": blob_db_dir}))
    result = await client.call_tool(
        "sql_query", {"query": "SELECT data, score, note FROM item WHERE id <= 2 ORDER BY id"},
        context={"db_id": "blobs"},
    )
    assert text(result) == "data | score | note\n<blob 2 bytes> | 0.25 | n1\n<blob 2 bytes> | NULL | a/b c"
    assert structured(result)["rows"] == [
        [{"$blob_hex": "01fe"}, 0.25, "n1"],
        [{"$blob_hex": "02fd"}, None, "a|b\nc"],
    ]


async def test_sql_error_is_a_model_facing_error(client: ToolClient, session_id: str) -> None:
    result = await client.call_tool("sql_query", {"query": "SELECT nme FROM singer"}, session_id=session_id)
    assert result.is_error
    assert text(result) == "SQL error: no such column: nme"


async def test_schema_pragmas_are_readable(client: ToolClient, session_id: str) -> None:
    result = await client.call_tool("sql_query", {"query": "PRAGMA table_info(concert)"}, session_id=session_id)
    assert not result.is_error
    assert [row[1] for row in structured(result)["rows"]] == [
        "concert_ID", "concert_Name", "Theme", "Stadium_ID", "Year"
    ]


# ---------------------------------------------------------------- ListTools and argument errors


async def test_list_tools_publishes_the_json_schemas_of_the_args_models(client: ToolClient) -> None:
    specs = {s.name: s for s in await client.list_tools()}
    assert list(specs) == ["sql_query", "list_tables", "describe_table"]
    models = {"sql_query": SqlQueryArgs, "list_tables": ListTablesArgs, "describe_table": DescribeTableArgs}
    for name, model in models.items():
        schema = json.loads(specs[name].parameters_json_schema)
        assert schema == model.model_json_schema()
        jsonschema.Draft202012Validator.check_schema(schema)
        assert specs[name].description
    sql_schema = json.loads(specs["sql_query"].parameters_json_schema)
    assert sql_schema["required"] == ["query"]
    assert sql_schema["properties"]["query"]["type"] == "string"
    jsonschema.validate({"query": "SELECT 1"}, sql_schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({}, sql_schema)
    assert json.loads(specs["list_tables"].parameters_json_schema)["additionalProperties"] is False


async def test_a_deployment_serves_only_the_tools_it_names(start_tools: Any, make_client: Any) -> None:
    client = make_client(await start_tools(tools=("sql_query",)))
    assert [s.name for s in await client.list_tools()] == ["sql_query"]
    result = await client.call_tool("list_tables", {}, context={"db_id": "singer"})
    assert result.is_error
    assert text(result) == "unknown tool 'list_tables'; the available tools are: sql_query"


async def test_unknown_tool_is_an_error_naming_the_available_tools(client: ToolClient, session_id: str) -> None:
    result = await client.call_tool("run_python", {"code": "1"}, session_id=session_id)
    assert result.is_error and result.name == "run_python"
    assert text(result) == (
        "unknown tool 'run_python'; the available tools are: describe_table, list_tables, sql_query"
    )


@pytest.mark.parametrize(
    ("tool", "arguments", "expected"),
    [
        ("sql_query", {}, "invalid arguments for sql_query: field 'query': Field required"),
        ("sql_query", {"query": 5}, "invalid arguments for sql_query: field 'query': Input should be a valid string"),
        ("sql_query", {"query": ""}, "field 'query': String should have at least 1 character"),
        ("describe_table", {"table": "x" * 300}, "field 'table': String should have at most 256 characters"),
        ("list_tables", {"verbose": True}, "invalid arguments for list_tables: field 'verbose': Extra inputs"),
    ],
)
async def test_schema_failing_arguments_are_errors_naming_the_field(
    client: ToolClient, session_id: str, tool: str, arguments: dict[str, Any], expected: str
) -> None:
    result = await client.call_tool(tool, arguments, session_id=session_id)
    assert result.is_error
    assert expected in text(result)


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ('{"query": "SELECT 1"', "the arguments of sql_query are not valid JSON (Expecting ',' delimiter"),
        ("{'query': 'SELECT 1'}", "are not valid JSON (Expecting property name enclosed in double quotes"),
        ("SELECT 1", "are not valid JSON"),
        ('["SELECT 1"]', "the arguments of sql_query must be a JSON object, not list"),
        ('"SELECT 1"', "must be a JSON object, not str"),
    ],
)
async def test_malformed_json_is_an_error(
    client: ToolClient, session_id: str, arguments: str, expected: str
) -> None:
    result = await client.call_tool("sql_query", arguments, session_id=session_id)
    assert result.is_error
    assert expected in text(result)


async def test_one_off_call_carries_its_context_inline(client: ToolClient) -> None:
    result = await client.call_tool("sql_query", {"query": "SELECT count(*) FROM singer"}, context={"db_id": "singer"})
    assert not result.is_error
    assert structured(result)["rows"] == [[8]]
