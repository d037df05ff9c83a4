"""Sessions (open, close, idle expiry, the cap) and the status codes of requests that
our own code built wrongly, against a real server; plus ``SessionStore`` on a fake clock."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import grpc
import pytest

from rlyard.client import ToolClient
from rlyard.errors import AlreadyExists, ConfigError, InvalidArgument, NotFound, ResourceExhausted
from rlyard.tools.v1 import tools_pb2
from tool_servers.session import SessionStore
from tool_servers.settings import ToolServerSettings


async def rpc_code(awaitable: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await awaitable
    return info.value.code(), info.value.details() or ""


# ---------------------------------------------------------------- open / close


async def test_open_call_close_session(client: ToolClient) -> None:
    sid = await client.open_session({"db_id": "pets_1"})
    assert len(sid) == 32  # a uuid4 hex made by the server
    result = await client.call_tool("sql_query", {"query": "SELECT count(*) FROM Pets"}, session_id=sid)
    assert not result.is_error and result.structured["columns"] == ["count(*)"] and result.structured["rows"] == [[3]]
    assert await client.close_session(sid) is True
    assert await client.close_session(sid) is False
    code, details = await rpc_code(client.call_tool("list_tables", {}, session_id=sid))
    assert code == grpc.StatusCode.NOT_FOUND
    assert repr(sid) in details


async def test_caller_chosen_session_id_and_server_default_idle(client: ToolClient) -> None:
    resp = await client.stub.OpenSession(
        tools_pb2.OpenSessionRequest(session_id="traj-7", context={"db_id": "singer"}), timeout=5
    )
    assert resp.session_id == "traj-7"
    assert resp.idle_timeout_s == 600.0  # the server's default (ToolServerSettings.session_idle_s)
    result = await client.call_tool("list_tables", {}, session_id="traj-7")
    assert result.content[0].text.startswith("singer (8 rows)")


async def test_sessions_are_isolated_by_database(client: ToolClient) -> None:
    a = await client.open_session({"db_id": "concert_singer"})
    b = await client.open_session({"db_id": "pets_1"})
    ra = await client.call_tool("list_tables", {}, session_id=a)
    rb = await client.call_tool("list_tables", {}, session_id=b)
    assert "stadium" in ra.content[0].text and "stadium" not in rb.content[0].text
    assert "Pets" in rb.content[0].text


# ---------------------------------------------------------------- status codes


async def test_unknown_session_is_not_found(client: ToolClient) -> None:
    code, details = await rpc_code(client.call_tool("list_tables", {}, session_id="never-opened"))
    assert code == grpc.StatusCode.NOT_FOUND
    assert "session 'never-opened' is not open" in details


async def test_unknown_db_id_is_not_found(client: ToolClient) -> None:
    code, details = await rpc_code(client.open_session({"db_id": "no_such_db"}))
    assert code == grpc.StatusCode.NOT_FOUND and "no database 'no_such_db'" in details
    code, _ = await rpc_code(client.call_tool("list_tables", {}, context={"db_id": "no_such_db"}))
    assert code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("db_id", ["../concert_singer", "concert_singer/../singer", "", "a b", "x" * 200,
                                   "concert_singer\n"])
async def test_invalid_db_id_is_invalid_argument(client: ToolClient, db_id: str) -> None:
    code, details = await rpc_code(client.open_session({"db_id": db_id}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "is not a valid database name" in details


async def test_missing_db_id_is_invalid_argument(client: ToolClient) -> None:
    code, details = await rpc_code(client.open_session({"database": "singer"}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "db_id" in details
    # a one-off call without context has no database either
    code, _ = await rpc_code(client.call_tool("sql_query", {"query": "SELECT 1"}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


async def test_duplicate_session_id_is_already_exists(client: ToolClient) -> None:
    assert await client.open_session({"db_id": "singer"}, session_id="dup") == "dup"
    code, details = await rpc_code(client.open_session({"db_id": "singer"}, session_id="dup"))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "'dup'" in details


async def test_overlong_session_id_is_invalid_argument(client: ToolClient) -> None:
    code, _ = await rpc_code(client.open_session({"db_id": "singer"}, session_id="s" * 257))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


# ---------------------------------------------------------------- idle expiry and the cap


async def test_idle_session_expires(start_tools: Any, make_client: Any) -> None:
    client = make_client(await start_tools(session_idle_s=0.2))
    opened = time.monotonic()
    await client.open_session({"db_id": "singer"}, session_id="idle")

    async def wait_until_gone() -> None:
        # Re-opening the same id does not touch the old session: ALREADY_EXISTS until it expires.
        while True:
            try:
                await client.open_session({"db_id": "singer"}, session_id="idle")
                return
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.ALREADY_EXISTS
                await asyncio.sleep(0.02)

    await asyncio.wait_for(wait_until_gone(), timeout=5)
    assert time.monotonic() - opened >= 0.2


async def test_a_used_session_does_not_expire(start_tools: Any, make_client: Any) -> None:
    client = make_client(await start_tools(session_idle_s=0.3))
    sid = await client.open_session({"db_id": "singer"})
    deadline = time.monotonic() + 1.0  # over three idle timeouts, used every 50 ms
    while time.monotonic() < deadline:
        result = await client.call_tool("list_tables", {}, session_id=sid)
        assert not result.is_error
        await asyncio.sleep(0.05)
    assert await client.close_session(sid) is True


async def test_per_session_idle_timeout_overrides_the_default(start_tools: Any, make_client: Any) -> None:
    # The reaper of a 60 s default runs every 15 s; the session's own 0.1 s still holds.
    client = make_client(await start_tools(session_idle_s=60.0))
    resp = await client.stub.OpenSession(
        tools_pb2.OpenSessionRequest(context={"db_id": "singer"}, idle_timeout_s=0.1), timeout=5
    )
    assert resp.idle_timeout_s == pytest.approx(0.1)
    assert not (await client.call_tool("list_tables", {}, session_id=resp.session_id)).is_error
    await asyncio.sleep(0.25)  # idle for over twice its timeout: nothing to poll, idleness is the point
    code, _ = await rpc_code(client.call_tool("list_tables", {}, session_id=resp.session_id))
    assert code == grpc.StatusCode.NOT_FOUND


async def test_max_sessions_is_resource_exhausted(start_tools: Any, make_client: Any) -> None:
    client = make_client(await start_tools(max_sessions=2))
    first = await client.open_session({"db_id": "singer"})
    await client.open_session({"db_id": "singer"})
    code, details = await rpc_code(client.open_session({"db_id": "singer"}))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "2 sessions are open" in details
    assert await client.close_session(first)
    assert await client.open_session({"db_id": "singer"})


async def test_full_store_frees_expired_sessions_on_open(start_tools: Any, make_client: Any) -> None:
    client = make_client(await start_tools(max_sessions=1, session_idle_s=60.0))
    await client.open_session({"db_id": "singer"}, session_id="old", idle_timeout_s=0.05)
    await asyncio.sleep(0.1)  # past the 50 ms idle time; the reaper (every 15 s) has not run
    assert await client.open_session({"db_id": "singer"}, session_id="new") == "new"
    assert await client.close_session("old") is False


# ---------------------------------------------------------------- SessionStore on a fake clock


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_store_expires_only_sessions_idle_past_their_timeout() -> None:
    clock = FakeClock()
    store = SessionStore(default_idle_s=10.0, max_sessions=10, clock=clock)
    store.open("a", {}, 0.0)          # default: 10 s
    store.open("b", {}, 30.0)         # its own: 30 s
    clock.now += 10.5
    assert store.expire() == 1
    with pytest.raises(NotFound):
        store.get("a")
    clock.now += 15.0
    store.get("b")                    # touched at 1025.5
    clock.now += 29.0
    assert store.expire() == 0
    clock.now += 2.0
    assert store.expire() == 1 and len(store) == 0


def test_store_get_refuses_a_session_idle_past_its_timeout_before_the_reaper_runs() -> None:
    clock = FakeClock()
    store = SessionStore(default_idle_s=10.0, max_sessions=10, clock=clock)
    store.open("a", {}, 1.0)
    clock.now += 0.9
    assert store.get("a").session_id == "a"   # touched: idle time starts again
    clock.now += 0.9
    store.get("a")
    clock.now += 1.1
    with pytest.raises(NotFound):
        store.get("a")
    assert len(store) == 0


def test_store_errors_carry_their_codes() -> None:
    store = SessionStore(default_idle_s=10.0, max_sessions=1, clock=FakeClock())
    store.open("a", {}, 0.0)
    with pytest.raises(AlreadyExists) as dup:
        store.open("a", {}, 0.0)
    assert dup.value.code == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(ResourceExhausted):
        store.open("b", {}, 0.0)
    with pytest.raises(InvalidArgument):
        store.open("c" * 257, {}, 0.0)


def test_store_validates_context_before_opening() -> None:
    def validate(ctx: Any) -> None:
        if ctx.get("db_id") != "ok":
            raise NotFound("no such db")

    store = SessionStore(default_idle_s=10.0, max_sessions=5, validate=validate)
    with pytest.raises(NotFound):
        store.open("", {"db_id": "bad"}, 0.0)
    assert len(store) == 0
    with pytest.raises(NotFound):
        store.ephemeral({"db_id": "bad"})
    assert store.ephemeral({"db_id": "ok"}).ephemeral is True


# ---------------------------------------------------------------- what a session may pin (issue 19, 7)


@pytest.mark.parametrize("asked", [math.inf, -math.inf, math.nan, -5.0])
async def test_a_non_finite_or_negative_idle_timeout_is_invalid_argument(client: ToolClient, asked: float) -> None:
    code, details = await rpc_code(client.open_session({"db_id": "singer"}, idle_timeout_s=asked))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "idle_timeout_s must be a finite number of seconds >= 0" in details and "600 s" in details


async def test_an_idle_timeout_over_the_maximum_is_capped_and_reported(start_tools: Any, make_client: Any) -> None:
    client = make_client(await start_tools(session_idle_s=60.0, session_max_idle_s=120.0))
    for asked, kept in ((1e308, 120.0), (121.0, 120.0), (90.0, 90.0), (0.0, 60.0)):
        resp = await client.stub.OpenSession(
            tools_pb2.OpenSessionRequest(context={"db_id": "singer"}, idle_timeout_s=asked), timeout=5)
        assert resp.idle_timeout_s == kept, asked


@pytest.mark.parametrize(("context", "says"), [
    ({"db_id": "singer", "k" * 10_000_000: "v"}, "a context key of 10000000 characters ('kkkk"),
    ({"db_id": "singer", "note": "v" * 1025}, "the context value of 'note' is 1025 characters; at most 1024"),
    ({"db_id": "singer", **{f"k{i}": "v" for i in range(16)}}, "the context has 17 keys; at most 16"),
], ids=["10MB-key", "long-value", "many-keys"])
async def test_a_context_over_its_limits_is_invalid_argument(
    client: ToolClient, context: dict[str, str], says: str
) -> None:
    code, details = await rpc_code(client.open_session(context))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and says in details and len(details) < 1_000
    code, details = await rpc_code(client.call_tool("list_tables", {}, context=context))   # one-off calls too
    assert code == grpc.StatusCode.INVALID_ARGUMENT and says in details


def test_session_limits_are_checked_when_settings_load() -> None:
    with pytest.raises(ConfigError, match="SESSION_MAX_IDLE_S must be finite and at least"):
        ToolServerSettings(session_idle_s=600.0, session_max_idle_s=60.0)
    with pytest.raises(ConfigError, match="SESSION_MAX_IDLE_S"):
        ToolServerSettings(session_max_idle_s=math.inf)
    with pytest.raises(ConfigError, match="SESSION_IDLE_S must be a finite"):
        ToolServerSettings(session_idle_s=math.nan)
    with pytest.raises(ConfigError, match="SESSION_MAX_CONTEXT_KEYS must be >= 1"):
        ToolServerSettings(session_max_context_keys=0)
