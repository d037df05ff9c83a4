"""The plug-in registry and the tool server's settings: duplicate names refused,
unknown names fail at start-up, and a plug-in of the test's own runs end to end
(including the error mapping of a tool that fails)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
from pydantic import BaseModel, Field

from rlyard.client import NO_RETRY
from rlyard.domain import ToolResult
from rlyard.errors import ConfigError, Unavailable
from rlyard.tools.v1 import tools_pb2
from tool_servers import registry
from tool_servers.app import tool_service
from tool_servers.catalog import TOOL_MODULES
from tool_servers.poi.settings import PoiSettings
from tool_servers.registry import ToolContext, build_tools, register
from tool_servers.session import Session
from tool_servers.settings import ToolServerSettings
from tool_servers.sql.settings import SqlSettings
from tool_servers.sql.sql_query import SqlQuery


class EchoArgs(BaseModel):
    text: str = Field(description="what to repeat")
    times: int = Field(1, ge=1, le=3)


class Echo:
    """A test plug-in; 'boom' is a bug in the tool, 'down' a failure of its backend."""

    name = "test_echo"
    description = "Repeat a text."
    Args = EchoArgs

    def __init__(self, ctx: ToolContext) -> None:
        self.ctx = ctx

    def validate_context(self, context: Mapping[str, str]) -> None:
        """Needs no context."""

    async def call(self, args: EchoArgs, session: Session) -> ToolResult:
        if args.text == "boom":
            raise RuntimeError("kaboom")
        if args.text == "down":
            raise Unavailable("the echo backend is down")
        if args.text == "tuple-key":   # a result whose structured data JSON cannot hold (a key that is a tuple)
            return ToolResult.of_text("written half", structured={(1, 2): "x"})
        return ToolResult.of_text(" ".join([args.text] * args.times), structured={"times": args.times})


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The real registry's entries in a copy, so that test plug-ins do not leak."""
    for name in ("sql_query", "list_tables", "describe_table"):
        registry.load_tool(name)
    copy = dict(registry.REGISTRY)
    monkeypatch.setattr(registry, "REGISTRY", copy)
    yield copy


def ctx(tmp_path: Path, **overrides: Any) -> ToolContext:
    return ToolContext.create(ToolServerSettings(**overrides), [SqlSettings(db_dir=tmp_path)])


def test_registry_refuses_a_duplicate_name(scratch_registry: dict[str, Any]) -> None:
    class Impostor:
        name = "sql_query"

    with pytest.raises(ConfigError) as info:
        register(Impostor)
    assert "'sql_query' is registered twice" in str(info.value)
    assert scratch_registry["sql_query"] is SqlQuery


def test_registering_the_same_class_again_is_harmless(scratch_registry: dict[str, Any]) -> None:
    assert register(SqlQuery) is SqlQuery
    assert register(Echo) is Echo
    assert register(Echo) is Echo
    assert scratch_registry["test_echo"] is Echo


def test_every_shipped_tool_lives_in_the_file_of_its_name() -> None:
    for name, module in TOOL_MODULES.items():
        assert module.rsplit(".", 1)[1] == name
        assert registry.load_tool(name).__module__ == module


def test_build_tools_fails_on_an_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        build_tools(["sql_query", "sql_querry"], ctx(tmp_path))
    message = str(info.value)
    assert message.startswith("unknown tool 'sql_querry'; available: ")
    # every tool of the catalog, sorted (tools registered by other tests in this process may be listed too)
    available = message.split("available: ", 1)[1].split(", ")
    assert available == sorted(available)
    assert set(TOOL_MODULES) <= set(available)


def test_an_unknown_tool_fails_at_start_up_not_at_the_first_call(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown tool 'web_search'"):
        tool_service(ToolServerSettings(tools=("sql_query", "web_search")), [SqlSettings(db_dir=tmp_path)])


def test_a_sql_server_imports_none_of_the_poi_familys_dependencies(repo: Any) -> None:
    # a fresh interpreter: what building a SQL-only server imports, and nothing else
    probe = (
        "import sys\n"
        "from tool_servers.app import tool_service\n"
        "from tool_servers.settings import ToolServerSettings\n"
        "tool_service(ToolServerSettings(tools=('sql_query', 'list_tables', 'describe_table')))\n"
        "heavy = sorted(m for m in ('numpy', 'faiss', 'bm25s', 'Stemmer', 'torch', 'sentence_transformers',\n"
        "                           'tool_servers.poi.store', 'reward_service', 'trainer') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(repo.root)}
    out = subprocess.run([str(repo.python), "-c", probe], capture_output=True, text=True, env=env, cwd=repo.root,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
    # and the POI family does load them when asked for
    out = subprocess.run([str(repo.python), "-c", probe.replace("('sql_query', 'list_tables', 'describe_table')",
                                                                "('sql_query', 'nearby')")],
                         capture_output=True, text=True, env=env, cwd=repo.root, timeout=120)
    assert "numpy" in out.stdout.split(","), out.stderr


def test_a_family_whose_dependencies_are_missing_names_its_extra(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    package = tmp_path / "fake_family"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "needs_it.py").write_text("import not_an_installed_package_xyz  # noqa\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.TOOL_MODULES, "needs_it", "fake_family.needs_it")
    monkeypatch.setitem(registry.FAMILY_EXTRAS, "fake_family", "fake")
    with pytest.raises(ConfigError) as info:
        build_tools(["needs_it"], ctx(tmp_path))
    assert str(info.value) == ("tool 'needs_it' needs the 'fake' extra (missing module "
                               "'not_an_installed_package_xyz'): pip install 'rlyard[fake]'")


def test_a_variable_of_the_old_flat_settings_is_refused_with_its_new_name() -> None:
    with pytest.raises(ConfigError, match="RLYARD_TOOLS_DB_DIR \\(now RLYARD_TOOLS_SQL_DB_DIR\\)"):
        ToolServerSettings.from_env("RLYARD_TOOLS", {"RLYARD_TOOLS_DB_DIR": "/data"})


def test_build_tools_builds_the_named_tools_in_order(tmp_path: Path) -> None:
    tools = build_tools(("list_tables", "sql_query"), ctx(tmp_path))
    assert list(tools) == ["list_tables", "sql_query"]
    assert isinstance(tools["sql_query"], SqlQuery)


# ---------------------------------------------------------------- ToolServerSettings


def test_tool_settings_from_env_parse_the_tool_list_and_numbers() -> None:
    env = {
        "RLYARD_TOOLS_TOOLS": " sql_query, list_tables ,",
        "RLYARD_TOOLS_SQL_DB_DIR": "/srv/dbs",
        "RLYARD_TOOLS_SQL_TIMEOUT_S": "0.25",
        "RLYARD_TOOLS_MAX_SESSIONS": "7",
        "OTHER_TOOLS_MAX_SESSIONS": "8",
    }
    s = ToolServerSettings.from_env("RLYARD_TOOLS", env)
    assert (s.tools, s.max_sessions) == (("sql_query", "list_tables"), 7)
    sql = SqlSettings.from_env(SqlSettings.ENV_PREFIX, env)
    assert (sql.db_dir, sql.timeout_s, sql.max_rows) == (Path("/srv/dbs"), 0.25, 10_000)


@pytest.mark.parametrize(
    ("cls", "overrides", "variable"),
    [
        (ToolServerSettings, {"tools": ()}, "RLYARD_TOOLS_TOOLS"),
        (ToolServerSettings, {"worker_threads": 0}, "RLYARD_TOOLS_WORKER_THREADS"),
        (ToolServerSettings, {"max_sessions": -1}, "RLYARD_TOOLS_MAX_SESSIONS"),
        (SqlSettings, {"max_rows": 0}, "RLYARD_TOOLS_SQL_MAX_ROWS"),
        (SqlSettings, {"timeout_s": 0.0}, "RLYARD_TOOLS_SQL_TIMEOUT_S"),
        (PoiSettings, {"max_results": 0}, "RLYARD_TOOLS_POI_MAX_RESULTS"),
        (SqlSettings, {"max_bytes": 16 * 1024 * 1024}, "RLYARD_TOOLS_SQL_MAX_BYTES must be between 1 and 15728640"),
        (SqlSettings, {"verify_max_bytes": 15 * 1024 * 1024 + 1}, "RLYARD_TOOLS_SQL_VERIFY_MAX_BYTES"),
        (SqlSettings, {"verify_max_rows": 9_999}, "RLYARD_TOOLS_SQL_VERIFY_MAX_ROWS/_BYTES must be at least"),
        (SqlSettings, {"max_bytes": 2_000, "verify_max_bytes": 1_000}, "a reward must see every row the model saw"),
    ],
)
def test_bad_tool_settings_name_the_variable(cls: type, overrides: dict[str, Any], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        cls(**overrides)


def test_bad_tool_setting_in_the_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="RLYARD_TOOLS_SQL_MAX_ROWS='many': expected int"):
        SqlSettings.from_env(SqlSettings.ENV_PREFIX, {"RLYARD_TOOLS_SQL_MAX_ROWS": "many"})


def test_family_settings_come_from_the_environment_unless_given(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLYARD_TOOLS_SQL_DISPLAY_ROWS", "7")
    from_env = ToolContext.create(ToolServerSettings())
    assert from_env.family(SqlSettings).display_rows == 7
    given = ctx(tmp_path)
    assert given.family(SqlSettings).db_dir == tmp_path and given.family(SqlSettings).display_rows == 20
    from_env.close()
    given.close()


# ---------------------------------------------------------------- a plug-in end to end


@pytest.fixture
async def echo_client(scratch_registry: dict[str, Any], tmp_path: Path, start_tools: Any, make_client: Any) -> Any:
    register(Echo)
    definition = tool_service(ToolServerSettings(tools=("test_echo",)))
    return make_client(await start_tools(definition=definition), retry=NO_RETRY)


async def test_a_plug_in_is_listed_and_called(echo_client: Any) -> None:
    [spec] = await echo_client.list_tools()
    assert (spec.name, spec.description) == ("test_echo", "Repeat a text.")
    schema = json.loads(spec.parameters_json_schema)
    assert schema["properties"]["times"]["maximum"] == 3
    result = await echo_client.call_tool("test_echo", {"text": "hi", "times": 2})
    assert result.content[0].text == "hi hi"
    assert result.structured == {"times": 2}
    bad = await echo_client.call_tool("test_echo", {"text": "hi", "times": 9})
    assert bad.is_error and "field 'times': Input should be less than or equal to 3" in bad.content[0].text


async def test_a_service_error_of_a_tool_becomes_its_status_code(echo_client: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await echo_client.call_tool("test_echo", {"text": "down"})
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert info.value.details() == "the echo backend is down"


async def test_a_bug_in_a_tool_is_unknown_and_logged_with_its_traceback(
    echo_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="rlyard.interceptors"), pytest.raises(grpc.aio.AioRpcError) as info:
        await echo_client.call_tool("test_echo", {"text": "boom"})
    assert info.value.code() == grpc.StatusCode.UNKNOWN
    [record] = [r for r in caplog.records if r.name == "rlyard.interceptors"]
    assert "unexpected error in /rlyard.tools.v1.ToolService/CallTool" in record.getMessage()
    assert record.exc_info is not None and "kaboom" in str(record.exc_info[1])


async def test_a_bug_in_a_tool_does_not_break_the_other_calls_of_a_stream(echo_client: Any) -> None:
    call = echo_client.stub.CallTools(timeout=10)
    calls = [
        tools_pb2.CallToolRequest(call={"call_id": cid, "name": "test_echo", "arguments_json": json.dumps(args)})
        for cid, args in [("a", {"text": "x"}), ("b", {"text": "boom"}), ("c", {"text": "down"}),
                          ("e", {"text": "tuple-key"}), ("d", {"text": "y"})]
    ]
    await call.write(tools_pb2.CallToolsRequest(calls=calls))
    await call.done_writing()
    results = {r.call_id: r async for resp in call for r in resp.results}
    assert await call.code() == grpc.StatusCode.OK
    assert (results["a"].content[0].text, results["d"].content[0].text) == ("x", "y")
    assert results["b"].system_error.code == grpc.StatusCode.INTERNAL.value[0]
    assert results["b"].system_error.message == "test_echo failed (an unexpected error; the server logged it)"
    assert results["c"].system_error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    # written in place into the response, the result that failed half-way leaves nothing of itself behind
    failed = results["e"]
    assert failed.system_error.code == grpc.StatusCode.INTERNAL.value[0]
    assert (failed.name, list(failed.content), failed.structured_json) == ("test_echo", [], "")
