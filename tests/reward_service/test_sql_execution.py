"""``sql_execution`` end to end: a real SQL tool server on 127.0.0.1:0 over the Spider
SQLite files, reached over gRPC by the reward's own client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError

from reward_service.registry import RewardContext, build_rewards
from reward_service.rewards.sql_execution import (
    SqlExecution,
    SqlExecutionParams,
    gold_cache,
    sql_step_rewards,
)
from reward_service.settings import RewardSettings
from reward_service.types import RewardInputError, RewardKindName, RewardSystemError, StepReward
from rlyard.domain import ScoringItem, SystemFailure, ToolCall, ToolResult, Trajectory, Turn
from rlyard.errors import ConfigError
from rlyard.server import RunningServer

SINGERS = "SELECT name, age FROM singer"
GT = {"db_id": "concert_singer", "query": SINGERS}

MakeReward = Callable[..., SqlExecution]
Score = Callable[..., Awaitable[Any]]


@pytest.fixture
async def sql_server(start_tools: Callable[..., Awaitable[RunningServer]]) -> RunningServer:
    """The SQL tool server with a short time limit (and the default caps)."""
    return await start_tools(worker_threads=8, sql={"timeout_s": 0.5})


@pytest.fixture
async def make_reward() -> AsyncIterator[MakeReward]:
    """Factory: a ``SqlExecution`` on a fresh ``RewardContext`` (closed at teardown)."""
    contexts: list[RewardContext] = []

    def make(server: RunningServer | str, **settings: Any) -> SqlExecution:
        target = server.address if isinstance(server, RunningServer) else server
        settings.setdefault("tool_timeout_s", 10.0)
        ctx = RewardContext(RewardSettings(sql_tools_target=target, **settings))
        contexts.append(ctx)
        return SqlExecution(ctx)

    yield make
    for ctx in contexts:
        await ctx.close()


@pytest.fixture
def reward(sql_server: RunningServer, make_reward: MakeReward) -> SqlExecution:
    """The reward pointed at ``sql_server``."""
    return make_reward(sql_server)


async def score(reward: SqlExecution, prediction: str, ground_truth: Any = GT, **params: Any) -> Any:
    item = ScoringItem(item_id="i", prediction=prediction, ground_truth=ground_truth)
    return await asyncio.wait_for(reward.score(item, SqlExecutionParams(**params)), 30)


def sql_calls(outcome: str) -> float:
    """The tool server's count of ``sql_query`` calls with this outcome (process-wide)."""
    return REGISTRY.get_sample_value("rlyard_tool_calls_total", {"tool": "sql_query", "outcome": outcome}) or 0.0


# --- verdicts --------------------------------------------------------------------


async def test_correct_prediction_scores_1(reward: SqlExecution) -> None:
    out = await score(reward, "SELECT Name, Age FROM singer WHERE 1 = 1")
    assert out.value == 1.0
    assert "correct" in out.explanation and "6 rows" in out.explanation
    assert out.step_rewards == []  # no trajectory, no per-step feedback


async def test_wrong_prediction_scores_0(reward: SqlExecution) -> None:
    out = await score(reward, "SELECT name, age FROM singer WHERE age > 30")
    assert out.value == 0.0
    assert "wrong: 4 rows, the gold has 6" in out.explanation


async def test_sql_error_scores_0_and_says_so(reward: SqlExecution) -> None:
    out = await score(reward, "SELECT nme FROM singer")
    assert out.value == 0.0
    assert "the predicted query failed" in out.explanation
    assert "no such column: nme" in out.explanation


async def test_refused_statement_scores_0(reward: SqlExecution) -> None:
    out = await score(reward, "DELETE FROM singer")
    assert out.value == 0.0
    assert "refused" in out.explanation


async def test_timeout_scores_0_and_says_so(reward: SqlExecution, endless_count_sql: str) -> None:
    out = await score(reward, endless_count_sql)
    assert out.value == 0.0
    assert "timed out" in out.explanation and "time limit" in out.explanation


async def test_permuted_columns_match_under_spider_not_bird(reward: SqlExecution) -> None:
    pred = "SELECT age, name FROM singer"
    assert (await score(reward, pred)).value == 1.0
    assert (await score(reward, pred, semantics="bird")).value == 0.0


async def test_order_matters_only_when_the_gold_orders(reward: SqlExecution) -> None:
    ordered = {"db_id": "concert_singer", "query": "SELECT name FROM singer ORDER BY age"}
    reversed_pred = "SELECT name FROM singer ORDER BY age DESC"
    out = await score(reward, reversed_pred, ordered)
    assert out.value == 0.0 and "order matters" in out.explanation
    assert (await score(reward, "SELECT name FROM singer ORDER BY age", ordered)).value == 1.0
    # without ORDER BY in the gold any row order is fine
    unordered = {"db_id": "concert_singer", "query": "SELECT name FROM singer"}
    assert (await score(reward, reversed_pred, unordered)).value == 1.0
    assert (await score(reward, reversed_pred, ordered, semantics="bird")).value == 1.0


async def test_duplicates_multiset_under_spider_set_under_bird(reward: SqlExecution) -> None:
    gold = {"db_id": "concert_singer", "query": "SELECT country FROM singer"}  # France 4 times
    pred = "SELECT country FROM singer GROUP BY country"
    assert (await score(reward, pred, gold)).value == 0.0
    assert (await score(reward, pred, gold, semantics="bird")).value == 1.0


async def test_distinct_removed_unless_kept(reward: SqlExecution) -> None:
    gold = {"db_id": "concert_singer", "query": "SELECT DISTINCT country FROM singer"}
    pred = "SELECT country FROM singer"
    assert (await score(reward, pred, gold)).value == 1.0
    assert (await score(reward, pred, gold, keep_distinct=True)).value == 0.0
    # BIRD never removes DISTINCT, but compares sets
    assert (await score(reward, pred, gold, semantics="bird")).value == 1.0


async def test_spider_postprocess_repairs_spaced_operators(reward: SqlExecution) -> None:
    pred = "SELECT name, age FROM singer WHERE age > = 0"
    assert (await score(reward, pred)).value == 1.0
    assert (await score(reward, pred, semantics="bird")).value == 0.0  # BIRD runs it raw: a syntax error


async def test_fenced_and_tagged_predictions(reward: SqlExecution) -> None:
    assert (await score(reward, "```sql\nSELECT name, age FROM singer\n```")).value == 1.0
    assert (await score(reward, "<think>...</think><answer>SELECT name, age FROM singer</answer>")).value == 1.0


async def test_empty_prediction_scores_0(reward: SqlExecution) -> None:
    out = await score(reward, "<answer>  </answer>")
    assert out.value == 0.0 and "no SQL" in out.explanation


async def test_blobs_compare_as_bytes(start_tools: Callable[..., Awaitable[RunningServer]],
                                      blob_db_dir: Path, make_reward: MakeReward) -> None:
    server = await start_tools(sql={"db_dir": blob_db_dir})
    reward = make_reward(server)
    gold = {"db_id": "blobs", "query": "SELECT id, data FROM item"}
    assert (await score(reward, "SELECT data, id FROM item ORDER BY id DESC", gold)).value == 1.0
    assert (await score(reward, "SELECT id, hex(data) FROM item", gold)).value == 0.0


# --- caching ------------------------------------------------------------------------


async def test_gold_results_are_cached(reward: SqlExecution) -> None:
    before = sql_calls("ok")
    assert (await score(reward, SINGERS)).value == 1.0
    assert sql_calls("ok") - before == 2  # gold + prediction
    assert (await score(reward, "SELECT name, age FROM singer LIMIT 3")).value == 0.0
    assert sql_calls("ok") - before == 3  # the prediction only: the gold came from the cache
    cache = gold_cache(reward.ctx)
    assert (cache.hits, cache.misses, len(cache)) == (1, 1, 1)


async def test_concurrent_misses_share_one_gold_call(reward: SqlExecution) -> None:
    before = sql_calls("ok")
    outs = await asyncio.gather(*(score(reward, SINGERS) for _ in range(8)))
    assert [o.value for o in outs] == [1.0] * 8
    assert sql_calls("ok") - before == 1 + 8
    assert gold_cache(reward.ctx).misses == 1


async def test_gold_cache_is_an_lru_of_the_configured_size(sql_server: RunningServer,
                                                          make_reward: MakeReward) -> None:
    reward = make_reward(sql_server, gold_cache_size=2)
    golds = [{"db_id": "concert_singer", "query": f"SELECT {i}"} for i in range(3)]
    for gold in golds:
        await score(reward, "SELECT 0", gold)
    await score(reward, "SELECT 0", golds[0])  # evicted by golds[2]: a miss again
    cache = gold_cache(reward.ctx)
    assert (cache.misses, cache.hits, len(cache)) == (4, 0, 2)
    await score(reward, "SELECT 0", golds[0])
    assert cache.hits == 1


# --- failures that are not the model's ------------------------------------------------


async def test_missing_ground_truth_is_an_input_error(reward: SqlExecution) -> None:
    for gt in (None, "SELECT 1", {"query": SINGERS}, {"db_id": "concert_singer"}, {"db_id": "", "query": "x"}):
        with pytest.raises(RewardInputError):
            await score(reward, SINGERS, gt)


async def test_failing_gold_is_an_input_error(reward: SqlExecution) -> None:
    with pytest.raises(RewardInputError, match="gold query fails"):
        await score(reward, SINGERS, {"db_id": "concert_singer", "query": "SELECT nope FROM singer"})


async def test_unknown_database_is_an_input_error(reward: SqlExecution) -> None:
    with pytest.raises(RewardInputError, match="no_such_db"):
        await score(reward, SINGERS, {"db_id": "no_such_db", "query": SINGERS})


async def test_gold_past_the_time_limit_is_a_system_error(reward: SqlExecution, endless_count_sql: str) -> None:
    with pytest.raises(RewardSystemError, match="RLYARD_TOOLS_SQL_TIMEOUT_S"):
        await score(reward, SINGERS, {"db_id": "concert_singer", "query": endless_count_sql})


async def test_the_models_row_cap_does_not_cut_what_the_reward_compares(
        start_tools: Callable[..., Awaitable[RunningServer]], make_reward: MakeReward) -> None:
    reward = make_reward(await start_tools(sql={"max_rows": 4}))  # the model sees 4 of the 6 singers
    out = await score(reward, "SELECT Name, Age FROM singer WHERE 1 = 1")
    assert out.value == 1.0 and "6 rows" in out.explanation
    assert (await score(reward, "SELECT name, age FROM singer LIMIT 5")).value == 0.0


async def test_rows_cut_by_the_tool_cap(start_tools: Callable[..., Awaitable[RunningServer]],
                                        make_reward: MakeReward) -> None:
    server = await start_tools(sql={"max_rows": 4, "verify_max_rows": 4})
    reward = make_reward(server)
    with pytest.raises(RewardSystemError, match="RLYARD_TOOLS_SQL_VERIFY_MAX_ROWS"):
        await score(reward, SINGERS)  # gold of 6 rows, cut at 4
    small_gold = {"db_id": "concert_singer", "query": "SELECT name FROM singer WHERE age < 40"}  # 3 rows
    # a cut prediction whose row count already differs: certainly wrong, as the official says
    out = await score(reward, "SELECT name FROM singer", small_gold)
    assert out.value == 0.0 and "6 rows" in out.explanation
    # BIRD: a set may still match when more rows are hidden, unless a visible row is foreign
    with pytest.raises(RewardSystemError, match="RLYARD_TOOLS_SQL_VERIFY_MAX_ROWS"):
        twice = "SELECT name FROM singer WHERE age < 40 UNION ALL SELECT name FROM singer WHERE age < 40"
        await score(reward, twice, small_gold, semantics="bird")
    out = await score(reward, "SELECT name FROM singer ORDER BY age DESC", small_gold, semantics="bird")
    assert out.value == 0.0


async def test_stopped_tool_server_is_a_system_error(sql_server: RunningServer, reward: SqlExecution) -> None:
    assert (await score(reward, SINGERS)).value == 1.0  # gold now cached
    await sql_server.stop(0)
    with pytest.raises(RewardSystemError, match="UNAVAILABLE"):
        await score(reward, SINGERS)  # the prediction still needs the server
    with pytest.raises(RewardSystemError):
        await score(reward, SINGERS, {"db_id": "concert_singer", "query": "SELECT 1"})


# --- per-step execution feedback ----------------------------------------------------


async def test_step_rewards_from_real_tool_results(sql_server: RunningServer, make_client: Any,
                                                   reward: SqlExecution) -> None:
    client = make_client(sql_server)

    async def observe(call_id: str, query: str) -> ToolResult:
        return await client.call_tool("sql_query", {"query": query}, context={"db_id": "concert_singer"},
                                      call_id=call_id)

    def call(call_id: str, query: str) -> ToolCall:
        return ToolCall(call_id, "sql_query", json.dumps({"query": query}))

    ok, bad, ok2 = "SELECT count(*) FROM singer", "SELECT * FROM singers", "SELECT name, age FROM singer"
    turns = (
        Turn(0, "user", "How old are the singers?"),
        Turn(1, "assistant", "", tool_calls=(call("a", ok),)),
        Turn(2, "tool", "", tool_results=(await observe("a", ok),)),
        Turn(3, "assistant", "", tool_calls=(call("b", bad), call("c", ok))),
        Turn(4, "tool", "", tool_results=(await observe("b", bad), await observe("c", ok))),
        Turn(5, "assistant", "thinking, no tools"),
        Turn(6, "assistant", "", tool_calls=(call("d", ok2), ToolCall("e", "list_tables", "{}"))),
        Turn(7, "tool", "", tool_results=(await observe("d", ok2),)),
        Turn(8, "assistant", "<answer>SELECT name, age FROM singer</answer>"),
    )
    trajectory = Trajectory("t", "q", turns, final_answer="<answer>SELECT name, age FROM singer</answer>")
    item = ScoringItem(item_id="i", trajectory=trajectory, ground_truth=GT)
    out = await reward.score(item, SqlExecutionParams())
    assert out.value == 1.0
    assert out.step_rewards == [StepReward(1, 1.0), StepReward(3, 0.0), StepReward(6, 1.0)]


def test_step_rewards_match_by_position_and_skip_system_errors() -> None:
    def call(cid: str) -> ToolCall:
        return ToolCall(cid, "sql_query", '{"query": "SELECT 1"}')

    turns = (
        Turn(0, "assistant", "", tool_calls=(call(""), call(""))),
        Turn(1, "tool", "", tool_results=(ToolResult.of_text("1").answering("", "sql_query"),
                                                ToolResult.error("SQL error").answering("", "sql_query"))),
        Turn(2, "assistant", "", tool_calls=(call("x"),)),  # its result is inside the turn
        Turn(2, "assistant", "", tool_calls=(call("y"),),
                   tool_results=(ToolResult(call_id="y", name="sql_query", system_error=SystemFailure(14, "")),)),
        Turn(3, "assistant", "", tool_calls=(call("z"),)),  # no observation at all
        Turn(4, "tool", "", tool_results=(ToolResult.of_text("1").answering("x", "sql_query"),)),
    )
    steps = sql_step_rewards(Trajectory(turns=turns))
    assert steps == [StepReward(0, 0.0), StepReward(2, 1.0), StepReward(3, 0.0)]
    assert sql_step_rewards(None) == []


# --- the whole Spider dev set ---------------------------------------------------------


@pytest.fixture(scope="module")
def spider_dev(repo: Any) -> list[dict[str, str]]:
    """The Spider dev examples."""
    dev: list[dict[str, str]] = json.loads(Path(repo.spider_dev_json).read_text())
    return dev


async def test_every_spider_dev_gold_matches_itself(start_tools: Callable[..., Awaitable[RunningServer]],
                                                    make_reward: MakeReward, spider_dev: list[dict[str, str]]) -> None:
    # the default caps (the two 12,303-row wta_1 golds pass the model's 10,000-row cap: the
    # reward's verification calls have their own); a time limit with room for full concurrency
    server = await start_tools(worker_threads=8, sql={"timeout_s": 5.0})
    reward = make_reward(server)
    dev = spider_dev
    assert len(dev) == 1026
    bound = asyncio.Semaphore(32)

    async def one(example: dict[str, str]) -> tuple[float, str]:
        async with bound:
            gt = {"db_id": example["db_id"], "query": example["query"]}
            out = await reward.score(ScoringItem(prediction=example["query"], ground_truth=gt), SqlExecutionParams())
            return out.value, out.explanation

    results = await asyncio.wait_for(asyncio.gather(*(one(ex) for ex in dev)), 60)
    failures = [(ex["query"], why) for ex, (value, why) in zip(dev, results, strict=True) if value != 1.0]
    assert failures == []


# --- plug-in surface -------------------------------------------------------------------


def test_registered_as_a_tool_verification_reward() -> None:
    rewards = build_rewards(RewardContext(RewardSettings()), ["sql_execution"])
    assert isinstance(rewards["sql_execution"], SqlExecution)
    assert SqlExecution.kind == RewardKindName.TOOL_VERIFICATION
    schema = SqlExecutionParams.model_json_schema()
    assert schema["properties"]["semantics"]["enum"] == ["spider", "bird"]
    with pytest.raises(ValidationError):
        SqlExecutionParams.model_validate({"semantics": "exact"})
    with pytest.raises(ValidationError):
        SqlExecutionParams.model_validate({"keep_distinc": True})
    with pytest.raises(ConfigError, match="RLYARD_REWARD_WORKER_THREADS"):
        RewardSettings(worker_threads=0)
