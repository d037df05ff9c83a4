"""``RoutedToolClient``: sessions routed by id over 2-3 real tool servers on 127.0.0.1.

Each replica serves its own copy of ``concert_singer`` with one extra table, ``replica_<i>``,
so ``list_tables`` tells which replica answered; a plain ``ToolClient`` per replica checks where
a session lives (NOT_FOUND on every other replica). The only stand-in is DNS: a resolver whose
answer the test changes, as a headless Service's answer changes when pods come and go.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest

from rlyard.client import NO_RETRY, RetryPolicy, ToolClient
from rlyard.errors import Unavailable
from rlyard.routing import (
    RoutedToolClient,
    parse_routed_target,
    resolve_all,
    tool_client_for,
)
from rlyard.server import RunningServer

CONTEXT = {"db_id": "concert_singer"}
_MARK = re.compile(r"replica_(\d)")
FAST_RETRY = RetryPolicy(max_attempts=2, initial_backoff_s=0.01, max_backoff_s=0.02)


@pytest.fixture
async def replicas(tmp_path: Path, repo: Any, start_tools: Any) -> list[RunningServer]:
    """Three tool servers, each over its own db dir whose concert_singer has a ``replica_<i>`` table."""
    servers = []
    for i in range(3):
        db = tmp_path / f"r{i}" / "concert_singer" / "concert_singer.sqlite"
        db.parent.mkdir(parents=True)
        db.write_bytes((repo.spider_db_dir / "concert_singer" / "concert_singer.sqlite").read_bytes())
        with sqlite3.connect(db) as conn:
            conn.execute(f"CREATE TABLE replica_{i} (x INTEGER)")
        servers.append(await start_tools(sql={"db_dir": tmp_path / f"r{i}"}))
    return servers


def replica_index(text: str) -> int:
    match = _MARK.search(text)
    assert match, text
    return int(match.group(1))


def routed(servers: list[RunningServer], **kwargs: Any) -> RoutedToolClient:
    kwargs.setdefault("retry", FAST_RETRY)
    return RoutedToolClient(",".join(s.address for s in servers), **kwargs)


async def holders(servers: list[RunningServer], session_id: str) -> list[int]:
    """The indexes of the servers on which ``session_id`` is open."""
    found = []
    for i, server in enumerate(servers):
        async with ToolClient(server.address, retry=NO_RETRY) as direct:
            try:
                await direct.call_tool("list_tables", {}, session_id=session_id, timeout=5)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
                continue
        found.append(i)
    return found


# ---------------------------------------------------------------- targets


def test_targets() -> None:
    assert parse_routed_target("127.0.0.1:50051") is None
    assert parse_routed_target("sql-tools:50051") is None
    assert parse_routed_target("a:1, b:2") == (("a:1", "b:2"), None)
    assert parse_routed_target("routed:///sql-tools-headless:50051") == ((), ("sql-tools-headless", 50051))
    for bad in ("a:1,b", "a:1,a:1", "routed:///sql-tools", "a:1,:2", "routed:///x:70000"):
        with pytest.raises(ValueError, match="tool target"):
            parse_routed_target(bad)
    with pytest.raises(ValueError, match="names one server"):
        RoutedToolClient("a:1")


async def test_tool_client_for_picks_the_client_by_target() -> None:
    plain, static, dns = tool_client_for("a:1"), tool_client_for("a:1,b:2"), tool_client_for("routed:///a:1")
    try:
        assert type(plain) is ToolClient
        assert isinstance(static, RoutedToolClient) and sorted(static.replicas) == ["a:1", "b:2"]
        assert isinstance(dns, RoutedToolClient) and dns.replicas == {}   # resolved at first use
    finally:
        for client in (plain, static, dns):
            await client.close()


# ---------------------------------------------------------------- routing


async def test_sessions_spread_and_their_calls_land_where_they_live(replicas: list[RunningServer]) -> None:
    index = {s.address: i for i, s in enumerate(replicas)}
    async with routed(replicas) as client:
        assert len(await client.list_tools()) >= 3
        sessions = [await client.open_session(CONTEXT) for _ in range(30)]
        placed = {sid: index[client.replica_of(sid)] for sid in sessions}
        # spread: every replica holds some (the ring's expected share is 10 of 30)
        load = Counter(placed.values())
        assert sorted(load) == [0, 1, 2] and min(load.values()) >= 4, load
        # placed by the ring: another client with the same replicas routes them the same way
        assert all(client.ring.node_for(sid) == replicas[i].address for sid, i in placed.items())
        stream = client.stream()
        try:
            for sid in sessions:
                unary = await client.call_tool("list_tables", {}, session_id=sid)
                streamed = await stream.call("list_tables", {}, session_id=sid)
                assert replica_index(unary.text) == replica_index(streamed.text) == placed[sid]
        finally:
            await stream.close()
        for sid in sessions[:6]:   # open on its replica only
            assert await holders(replicas, sid) == [placed[sid]]
        for sid in sessions:
            assert await client.close_session(sid) is True
        assert await holders(replicas, sessions[0]) == []


async def test_one_off_calls_go_round_robin(replicas: list[RunningServer]) -> None:
    async with routed(replicas) as client:
        unary = [replica_index((await client.call_tool("list_tables", {}, context=CONTEXT)).text)
                 for _ in range(9)]
        stream = client.stream()
        try:
            streamed = [replica_index((await stream.call("list_tables", {}, context=CONTEXT)).text)
                        for _ in range(9)]
        finally:
            await stream.close()
    assert Counter(unary) == Counter(streamed) == {0: 3, 1: 3, 2: 3}


async def test_a_replica_stopped_mid_run_fails_only_its_own_sessions(replicas: list[RunningServer]) -> None:
    index = {s.address: i for i, s in enumerate(replicas)}
    async with routed(replicas, down_s=60.0) as client:
        sessions = [await client.open_session(CONTEXT) for _ in range(24)]
        placed = {sid: index[client.replica_of(sid)] for sid in sessions}
        assert set(placed.values()) == {0, 1, 2}
        stream = client.stream()
        first_round = asyncio.Barrier(len(sessions) + 1)

        async def trajectory(sid: str) -> str:
            """Five turns of calls; the error that ended it, as the engine would record it."""
            for turn in range(5):
                try:
                    result = await stream.call("list_tables", {}, session_id=sid, timeout=5)
                except Unavailable as exc:   # a ServiceError: the engine's infra-failure path
                    return f"infra: {exc}"
                finally:
                    if turn == 0:
                        await first_round.wait()
                assert replica_index(result.text) == placed[sid]
                await asyncio.sleep(0.01)
            return "ok"

        try:
            jobs = [asyncio.create_task(trajectory(sid)) for sid in sessions]
            await first_round.wait()           # every session made its first call
            await replicas[1].stop(0)          # then replica 1 goes away mid-run
            outcomes = dict(zip(sessions, await asyncio.gather(*jobs), strict=True))
            failed = {sid for sid, out in outcomes.items() if out != "ok"}
            assert failed == {sid for sid, i in placed.items() if i == 1}
            assert all(out.startswith("infra: ") for sid, out in outcomes.items() if sid in failed)
            dead = next(iter(failed))
            # unary calls of its sessions fail as UNAVAILABLE, and are not sent to another replica
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.call_tool("list_tables", {}, session_id=dead)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert client.down() == {replicas[1].address}
            # new sessions go to the others, including those whose ring owner is the stopped one
            new = [await client.open_session(CONTEXT) for _ in range(24)]
            assert any(client.ring.node_for(sid) == replicas[1].address for sid in new)
            assert {index[client.replica_of(sid)] for sid in new} == {0, 2}
            for sid in new:
                assert replica_index((await stream.call("list_tables", {}, session_id=sid)).text) in (0, 2)
            # one-off calls skip it too
            for _ in range(4):
                assert replica_index((await client.call_tool("list_tables", {}, context=CONTEXT)).text) in (0, 2)
        finally:
            await stream.close()


async def test_dns_refresh_adds_and_removes_replicas(replicas: list[RunningServer]) -> None:
    answer = [s.address for s in replicas[:2]]
    asked: list[tuple[str, int]] = []

    async def resolve(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return list(answer)

    index = {s.address: i for i, s in enumerate(replicas)}
    async with RoutedToolClient("routed:///sql-tools-headless:50051", resolve=resolve, retry=FAST_RETRY,
                                refresh_s=3600) as client:
        old = [await client.open_session(CONTEXT) for _ in range(20)]
        assert asked == [("sql-tools-headless", 50051)]
        placed = {sid: client.replica_of(sid) for sid in old}
        assert {index[r] for r in placed.values()} == {0, 1}

        answer.append(replicas[2].address)     # scale up: a third pod
        await client.refresh()
        # the ring now gives some old ids to the new replica (about a third); the sessions opened
        # here stay where their state is
        moved = [sid for sid in old if client.ring.node_for(sid) != placed[sid]]
        assert all(client.ring.node_for(sid) == replicas[2].address for sid in moved)
        assert all(client.replica_of(sid) == placed[sid] for sid in old)
        for sid in old:
            text = (await client.call_tool("list_tables", {}, session_id=sid)).text
            assert replica_index(text) == index[placed[sid]]
        new = [await client.open_session(CONTEXT) for _ in range(20)]
        assert {index[client.replica_of(sid)] for sid in new} == {0, 1, 2}

        answer.remove(replicas[0].address)     # scale down: the first pod leaves the answer
        await client.refresh()
        assert sorted(client.replicas) == sorted(s.address for s in replicas[1:])
        stream = client.stream()
        try:
            for sid in old + new:
                if client._sessions[sid] == replicas[0].address:
                    with pytest.raises(Unavailable, match="left"):
                        await stream.call("list_tables", {}, session_id=sid)
                    assert await client.close_session(sid) is False
                else:
                    assert replica_index((await stream.call("list_tables", {}, session_id=sid)).text) in (1, 2)
        finally:
            await stream.close()
        later = [await client.open_session(CONTEXT) for _ in range(10)]
        assert {index[client.replica_of(sid)] for sid in later} <= {1, 2}


async def test_refresh_runs_in_the_background_and_a_failed_lookup_keeps_the_replicas(
    replicas: list[RunningServer],
) -> None:
    answers: list[list[str] | OSError] = [[replicas[0].address], OSError("no such host"), [replicas[1].address]]

    async def resolve(host: str, port: int) -> list[str]:
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, OSError):
            raise answer
        return answer

    async with RoutedToolClient("routed:///tools:1", resolve=resolve, refresh_s=0.05, retry=FAST_RETRY) as client:
        await client.list_tools()
        assert list(client.replicas) == [replicas[0].address]
        await asyncio.sleep(0.06)
        await client.list_tools()              # starts a refresh; the lookup fails
        for _ in range(200):
            if len(answers) == 1:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.01)
        assert len(answers) == 1 and list(client.replicas) == [replicas[0].address]
        await asyncio.sleep(0.06)
        await client.list_tools()              # the next one moves to replica 1
        for _ in range(200):
            if list(client.replicas) != [replicas[0].address]:
                break
            await asyncio.sleep(0.01)
        assert list(client.replicas) == [replicas[1].address]


async def test_routed_over_a_real_dns_name(replicas: list[RunningServer]) -> None:
    port = replicas[0].port
    assert f"127.0.0.1:{port}" in await resolve_all("localhost", port)
    # localhost may also answer ::1, where nothing listens: that replica is skipped as down
    async with RoutedToolClient(f"routed:///localhost:{port}", retry=FAST_RETRY) as client:
        sid = await client.open_session(CONTEXT)
        assert client.replica_of(sid) == f"127.0.0.1:{port}"
        assert replica_index((await client.call_tool("list_tables", {}, session_id=sid)).text) == 0
        assert await client.health() == "SERVING"


async def test_no_replica_answers(replicas: list[RunningServer]) -> None:
    for server in replicas[:2]:
        await server.stop(0)
    async with routed(replicas[:2]) as client:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.open_session(CONTEXT)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert client.down() == {s.address for s in replicas[:2]}
