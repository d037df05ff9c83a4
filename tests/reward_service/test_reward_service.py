"""The reward service over real gRPC: ListRewards, Score, ScoreBatch with mixed rewards,
status codes, and a SQL tool server that dies in the middle of a batch."""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from reward_service.app import reward_service
from reward_service.settings import RewardSettings
from rlyard.client import RetryPolicy
from rlyard.domain import (
    RewardSpec,
    ScoreResult,
    ScoreStatus,
    ScoringItem,
    ToolCall,
    ToolResult,
    Trajectory,
    Turn,
    parse_spec,
)
from rlyard.domain.convert import item_to_pb, score_from_pb, spec_to_pb
from rlyard.reward.v1 import reward_pb2
from rlyard.reward_client import RewardClient
from rlyard.server import RunningServer, start_server
from rlyard.settings import ServerSettings
from tool_servers.app import tool_service
from tool_servers.settings import ToolServerSettings
from tool_servers.sql.settings import SqlSettings

ROOT = Path(__file__).resolve().parents[2]
DB_DIR = ROOT / "data" / "spider" / "database"


@pytest.fixture
async def sql_tools() -> AsyncIterator[RunningServer]:
    running = await start_server(tool_service(ToolServerSettings(), [SqlSettings(db_dir=DB_DIR)]), ServerSettings())
    yield running
    await running.stop(0)


@pytest.fixture
async def reward(sql_tools: RunningServer) -> AsyncIterator[RewardClient]:
    settings = RewardSettings(sql_tools_target=sql_tools.address, tool_timeout_s=5.0)
    running = await start_server(reward_service(settings), ServerSettings())
    async with RewardClient(running.address, timeout=30.0, retry=RetryPolicy(max_attempts=1)) as client:
        yield client
    await running.stop(0)


async def test_list_rewards_publishes_every_reward_with_its_kind_and_schema(reward: RewardClient) -> None:
    infos = {r.name: r for r in await reward.list_rewards()}
    expected = {"qa_em", "qa_f1", "search_r1", "format", "tool_call_match", "sql_execution", "judge", "composite"}
    assert expected <= set(infos)
    assert infos["sql_execution"].kind == "tool_verification"
    assert infos["judge"].kind == "model_judge"
    assert infos["qa_f1"].kind == "rule"
    assert infos["composite"].kind == "composite"
    assert "semantics" in infos["sql_execution"].params_schema["properties"]


async def batch(client: RewardClient, items: list[tuple[ScoringItem, RewardSpec | None]],
                default: RewardSpec | None = None) -> list[ScoreResult]:
    """``ScoreBatch`` with a spec per item (the contract allows it; the typed client sends one)."""
    request = reward_pb2.ScoreBatchRequest(items=[item_to_pb(i, s) for i, s in items])
    if default is not None:
        request.default_spec.CopyFrom(spec_to_pb(default))
    resp = await client.stub.ScoreBatch(request, timeout=60)
    return [score_from_pb(r) for r in resp.results]


async def test_score_one_item_with_two_weighted_components(reward: RewardClient) -> None:
    item = ScoringItem("q1", "The Eiffel Tower!", ground_truth={"answers": ["eiffel tower", "Tour Eiffel"]})
    resp = await reward.score(item, parse_spec({"qa_em": 1.0, "qa_f1": 0.5}))
    assert resp.status == ScoreStatus.OK
    assert resp.values == {"qa_em": 1.0, "qa_f1": 1.0}
    assert resp.total == pytest.approx(1.5)
    partial = await reward.score(ScoringItem("q2", "tower in Paris", ground_truth={"answers": ["Eiffel Tower"]}),
                                 parse_spec({"qa_f1": 1.0}))
    # pred tokens {tower, in, paris}, gold {eiffel, tower}: 1 common; P = 1/3, R = 1/2, F1 = 0.4
    assert partial.total == pytest.approx(0.4)


def _sql_trajectory(queries: list[tuple[str, bool]], final: str) -> Trajectory:
    turns = []
    for i, (query, failed) in enumerate(queries):
        call = ToolCall(f"c{i}", "sql_query", json.dumps({"query": query}))
        turns.append(Turn(2 * i, "assistant", f"<think>try</think><tool_call>{query}</tool_call>", (call,)))
        turns.append(Turn(2 * i + 1, "tool", "", (), (ToolResult(is_error=failed, call_id=f"c{i}", name="sql_query"),)))
    turns.append(Turn(2 * len(queries), "assistant", f"<think>done</think><answer>{final}</answer>"))
    return Trajectory("t", "task", tuple(turns), final, "COMPLETED")


async def test_batch_of_mixed_rewards_and_per_step_rewards(reward: RewardClient) -> None:
    gold = {"db_id": "concert_singer", "query": "SELECT count(*) FROM singer"}
    items: list[tuple[ScoringItem, RewardSpec | None]] = [
        (ScoringItem("sql-right", trajectory=_sql_trajectory(
            [("SELECT nme FROM singer", True), ("SELECT count(*) FROM singer", False)],
            "SELECT count(*) FROM singer"), ground_truth=gold),
         parse_spec({"sql_execution": 1.0, "format": 0.1})),
        (ScoringItem("sql-wrong", "SELECT count(*) FROM stadium", ground_truth=gold),
         parse_spec({"sql_execution": 1.0})),
        (ScoringItem("qa", "paris", ground_truth={"answers": ["Paris"]}), parse_spec({"qa_em": 1.0})),
        (ScoringItem("default-spec", "london", ground_truth={"answers": ["Paris"]}), None),
    ]
    results = await batch(reward, items, parse_spec({"qa_f1": 2.0}))
    by_id = {r.item_id: r for r in results}
    assert [r.item_id for r in results] == ["sql-right", "sql-wrong", "qa", "default-spec"]
    right = by_id["sql-right"]
    assert right.status == ScoreStatus.OK
    assert right.values == {"sql_execution": 1.0, "format": 1.0}
    assert right.total == pytest.approx(1.1)
    steps = {(s.component, s.turn_index): s.value for s in right.step_rewards}
    # execution feedback per turn that ran SQL (the first query failed), weight 1.0
    assert steps[("sql_execution", 0)] == 0.0 and steps[("sql_execution", 2)] == 1.0
    # format: one step per assistant turn, weighted by 0.1
    assert [steps[("format", i)] for i in (0, 2, 4)] == pytest.approx([0.1, 0.1, 0.1])
    assert by_id["sql-wrong"].total == 0.0 and by_id["sql-wrong"].status == ScoreStatus.OK
    assert by_id["qa"].total == 1.0
    assert by_id["default-spec"].total == 0.0 and by_id["default-spec"].components[0].weight == 2.0


async def test_items_that_repeat_a_spec_are_scored_as_items_with_their_own(reward: RewardClient) -> None:
    """A batch parses each distinct per-item spec once; items that repeat one, items with a spec that
    differs only in its weights, and items on the default spec each get their own weights."""
    f1_once, f1_thrice = parse_spec({"qa_f1": 1.0}), parse_spec({"qa_f1": 3.0, "qa_em": 1.0})
    specs: list[RewardSpec | None] = [f1_once, f1_thrice, None, f1_once, f1_thrice, None]
    # pred tokens {tower, in, paris}, gold {eiffel, tower}: F1 0.4, EM 0
    items = [(ScoringItem(f"i{k}", "tower in Paris", ground_truth={"answers": ["Eiffel Tower"]}), spec)
             for k, spec in enumerate(specs)]
    results = await batch(reward, items, parse_spec({"qa_f1": 0.5}))
    assert [r.item_id for r in results] == [f"i{k}" for k in range(6)]
    assert [r.total for r in results] == pytest.approx([0.4, 1.2, 0.2, 0.4, 1.2, 0.2])
    assert [len(r.components) for r in results] == [1, 2, 1, 1, 2, 1]


async def test_bad_requests_get_status_codes_bad_items_get_a_status(reward: RewardClient) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await reward.score(ScoringItem("x", "a"), parse_spec({"no_such_reward": 1.0}))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "no_such_reward" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await reward.score(ScoringItem("x", "a"), parse_spec({"qa_f1": {"squad_version": "v9"}}))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "squad_version" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await batch(reward, [(ScoringItem("x", "a"), None)])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "no spec" in (err.value.details() or "")
    missing = await reward.score(ScoringItem("x", "a", ground_truth={"db_id": "concert_singer"}),
                                 parse_spec({"sql_execution": 1.0}))
    assert missing.status == ScoreStatus.INVALID_INPUT and "query" in missing.error


async def test_sql_tool_server_stopped_mid_batch(sql_tools: RunningServer) -> None:
    """Items scored before the tool server dies score normally; those after report a system
    error, never a 0 that blames the model; items that need no tool are unaffected."""
    settings = RewardSettings(sql_tools_target=sql_tools.address, tool_timeout_s=2.0)
    running = await start_server(reward_service(settings), ServerSettings())
    spec = parse_spec({"sql_execution": 1.0})
    dev = json.loads((ROOT / "data" / "spider" / "dev.json").read_text())
    try:
        async with RewardClient(running.address, timeout=60.0) as client:
            first = [ScoringItem(f"a{i}", d["query"], ground_truth=d) for i, d in enumerate(dev[:20])]
            before = await client.score_batch(first, spec)
            assert all(r.status == ScoreStatus.OK and r.total == 1.0 for r in before)
            await sql_tools.stop(0)
            second: list[tuple[ScoringItem, RewardSpec | None]] = [
                (ScoringItem(f"b{i}", d["query"], ground_truth=d), spec) for i, d in enumerate(dev[20:30])
            ]
            second.append((ScoringItem("qa", "Paris", ground_truth={"answers": ["paris"]}), parse_spec({"qa_em": 1.0})))
            after = await asyncio.wait_for(batch(client, second), 60)
    finally:
        await running.stop(0)
    assert all(r.status == ScoreStatus.SYSTEM_ERROR for r in after[:-1])
    assert all(r.total == 0.0 and r.error for r in after[:-1])
    assert after[-1].status == ScoreStatus.OK and after[-1].total == 1.0


async def test_sql_execution_compares_results_past_the_models_row_cap(reward: RewardClient) -> None:
    """The wta_1 gold queries whose results exceed the model's row cap (RLYARD_TOOLS_SQL_MAX_ROWS)
    were refused as 'cut by the caps'; the reward's verification calls compare them in full."""
    cap = SqlSettings().max_rows
    dev = json.loads((ROOT / "data" / "spider" / "dev.json").read_text())
    db = sqlite3.connect(f"file:{DB_DIR / 'wta_1' / 'wta_1.sqlite'}?mode=ro", uri=True)
    try:
        big = [d for d in dev if d["db_id"] == "wta_1" and len(db.execute(d["query"]).fetchall()) > cap]
    finally:
        db.close()
    assert [d["query"] for d in big] == ["SELECT first_name ,  last_name FROM players ORDER BY birth_date"] * 2
    spec = parse_spec({"sql_execution": 1.0})
    wrong = [
        "SELECT first_name, last_name FROM players ORDER BY birth_date DESC",   # the gold orders: 0
        "SELECT first_name, last_name FROM players ORDER BY birth_date LIMIT 12302",
    ]
    items = [ScoringItem(f"gold{i}", d["query"], ground_truth=d) for i, d in enumerate(big)]
    items += [ScoringItem(f"wrong{i}", q, ground_truth=big[0]) for i, q in enumerate(wrong)]
    results = await asyncio.wait_for(reward.score_batch(items, spec), 60)
    assert [(r.status, r.total) for r in results] == (
        [(ScoreStatus.OK, 1.0)] * 2 + [(ScoreStatus.OK, 0.0)] * 2
    ), [r.error for r in results]
    assert "12303 rows" in results[0].components[0].explanation


async def test_sql_scoring_cpu_work_does_not_hold_up_other_requests(sql_tools: RunningServer) -> None:
    """sql_execution's CPU work runs off the service's event loop: while it tokenises a prediction
    that takes sqlparse seconds (past the reward's default text limit, raised here), a stream of
    qa_em requests (one after the other) keeps being answered. On the loop, the stream stalled for
    the whole tokenisation."""
    settings = RewardSettings(sql_tools_target=sql_tools.address, tool_timeout_s=5.0,
                              text_limits=("sql_execution=1000000",))
    running = await start_server(reward_service(settings), ServerSettings())
    try:
        async with RewardClient(running.address, timeout=30.0, retry=RetryPolicy(max_attempts=1)) as reward:
            await _slow_sql_beside_fast_qa(reward)
    finally:
        await running.stop(0)


async def _slow_sql_beside_fast_qa(reward: RewardClient) -> None:
    gold = {"db_id": "concert_singer", "query": "SELECT count(*) FROM singer"}
    slow_item = ScoringItem("slow", "SELECT " + "1+" * 100_000 + "1", ground_truth=gold)
    fast_item = ScoringItem("fast", "Paris", ground_truth={"answers": ["paris"]})
    started = time.monotonic()
    slow = asyncio.create_task(reward.score(slow_item, parse_spec({"sql_execution": 1.0})))
    answered = [started]
    while not slow.done():
        assert (await asyncio.wait_for(reward.score(fast_item, parse_spec({"qa_em": 1.0})), 60)).total == 1.0
        answered.append(time.monotonic())
    slow_result = await slow
    slow_s = time.monotonic() - started
    assert slow_result.total == 0.0 and "could not be tokenised" in slow_result.components[0].explanation
    stalls = [b - a for a, b in itertools.pairwise(answered)]
    # answered all along: no wait between two fast answers came near the slow item's time
    assert max(stalls) < slow_s / 3, f"stalled {max(stalls):.2f}s while the slow item took {slow_s:.2f}s"


def test_cli_scores_a_file_with_embedded_services(tmp_path: Path) -> None:
    import subprocess
    import sys

    lines = [
        {"id": "s1", "prediction": "SELECT count(*) FROM singer",
         "ground_truth": {"db_id": "concert_singer", "query": "SELECT count(*) FROM singer"}},
        {"id": "s2", "prediction": "SELECT name FROM singer",
         "ground_truth": {"db_id": "concert_singer", "query": "SELECT count(*) FROM singer"}},
        {"id": "s3", "prediction": "SELEC oops",
         "ground_truth": {"db_id": "concert_singer", "query": "SELECT count(*) FROM singer"}},
        {"id": "s4", "prediction": "SELECT 1", "ground_truth": {"query": "SELECT 1"}},
    ]
    src = tmp_path / "items.jsonl"
    src.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json at all\n")
    out = tmp_path / "scores.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "rlyard_app.cli.main", "reward", "score", "--spec", '{"sql_execution": 1.0}',
         "--input", str(src), "--output", str(out), "--sql-db-dir", str(DB_DIR)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in records] == ["s1", "s2", "s3", "s4", "5"]
    assert [r["total"] for r in records[:3]] == [1.0, 0.0, 0.0]
    assert records[0]["components"] == {"sql_execution": 1.0}
    assert records[3]["status"] == "INVALID_INPUT" and "db_id" in records[3]["error"]
    assert records[4]["status"] == "INVALID_INPUT" and "line 5" in records[4]["error"]
    assert result.returncode == 1  # some lines could not be scored
    assert "INVALID_INPUT: 2" in result.stdout and "OK: 3" in result.stdout


async def test_sql_execution_through_a_tool_server_that_requires_a_token() -> None:
    tools = await start_server(tool_service(ToolServerSettings(), [SqlSettings(db_dir=DB_DIR)]),
                               ServerSettings(auth_token="s3cret"))
    gold = {"db_id": "concert_singer", "query": "SELECT count(*) FROM singer"}
    item = ScoringItem("x", "SELECT count(*) FROM singer", ground_truth=gold)
    try:
        for token, status in ((None, ScoreStatus.SYSTEM_ERROR), ("s3cret", ScoreStatus.OK)):
            settings = RewardSettings(sql_tools_target=tools.address, sql_tools_auth_token=token)
            running = await start_server(reward_service(settings), ServerSettings())
            try:
                async with RewardClient(running.address, timeout=30.0) as client:
                    resp = await client.score(item, parse_spec({"sql_execution": 1.0}))
            finally:
                await running.stop(0)
            assert resp.status == status, resp.error
            if token is None:
                assert "UNAUTHENTICATED" in resp.error or "token" in resp.error
            else:
                assert resp.total == 1.0
    finally:
        await tools.stop(0)


def test_a_reward_service_imports_only_the_rewards_it_serves(tmp_path: Path) -> None:
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from reward_service.app import reward_service\n"
        "from reward_service.settings import RewardSettings\n"
        "reward_service(RewardSettings(rewards=('qa_em', 'qa_f1')))\n"
        "loaded = ('sqlparse', 'httpx', 'torch', 'numpy', 'reward_service.rewards.sql_execution', "
        "'reward_service.rewards.judge', 'tool_servers', 'trainer')\n"
        "print(','.join(m for m in loaded if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0 and out.stdout.strip() == "", out.stderr


async def test_a_reward_service_serves_the_named_rewards_and_refuses_unknown_ones() -> None:
    from rlyard.errors import ConfigError

    running = await start_server(reward_service(RewardSettings(rewards=("qa_em",))), ServerSettings())
    try:
        async with RewardClient(running.address, timeout=10.0) as client:
            assert [r.name for r in await client.list_rewards()] == ["qa_em"]
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.score(ScoringItem("x", "a"), parse_spec({"qa_f1": 1.0}))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "available: qa_em" in str(
                err.value.details())
    finally:
        await running.stop(0)
    with pytest.raises(ConfigError, match="unknown reward 'qa_emm'; available: composite, format, judge"):
        reward_service(RewardSettings(rewards=("qa_emm",)))
