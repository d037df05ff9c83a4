"""The tools run in-process (``LocalTools``, what environments write demonstrations with) go
through the tool server's executor: the same validation and model-facing messages as a served call."""

from __future__ import annotations

import pytest

from envs.text_to_sql import SqlToolbox
from rlyard.errors import InvalidArgument, NotFound
from tool_servers.local import LocalTools, tool_schemas
from tool_servers.sql.settings import SqlSettings

SQL = ("sql_query", "list_tables", "describe_table")


async def test_calls_are_validated_and_answered_as_on_a_server(repo: object) -> None:
    with LocalTools(SQL, [SqlSettings(db_dir=repo.spider_db_dir)]) as tools:  # type: ignore[attr-defined]
        ok = await tools.call("sql_query", {"query": "SELECT count(*) FROM singer"}, {"db_id": "concert_singer"})
        assert not ok.is_error and ok.structured["rows"] == [[6]] and ok.name == "sql_query" and ok.latency_ms > 0
        typo = await tools.call("sql_query", {"qeury": "SELECT 1"}, {"db_id": "concert_singer"})
        assert typo.is_error and typo.text == "invalid arguments for sql_query: field 'query': Field required"
        unknown = await tools.call("shell", {"cmd": "ls"}, {"db_id": "concert_singer"})
        assert unknown.is_error and unknown.text.startswith("unknown tool 'shell'; the available tools are:")
        bad_json = await tools.call("sql_query", "{query:", {"db_id": "concert_singer"})
        assert bad_json.is_error and "not valid JSON" in bad_json.text
        with pytest.raises(NotFound):
            await tools.call("list_tables", {}, {"db_id": "no_such_db"})
        with pytest.raises(InvalidArgument):
            await tools.call("list_tables", {}, {})


async def test_the_text_to_sql_toolbox_answers_a_bad_call_with_the_executors_message(repo: object) -> None:
    # before it went through the executor, a bad argument raised pydantic's ValidationError
    with SqlToolbox(repo.spider_db_dir) as box:  # type: ignore[attr-defined]
        text, is_error, structured = await box.call("concert_singer", "describe_table", {"tabel": "singer"})
    assert (text, is_error, structured) == ("invalid arguments for describe_table: field 'table': Field required",
                                            True, None)


def test_tool_schemas_are_what_list_tools_publishes() -> None:
    [schema] = tool_schemas(["sql_query"])
    assert schema["type"] == "function" and schema["function"]["name"] == "sql_query"
    assert schema["function"]["parameters"]["required"] == ["query"]
