"""What one request may cost the reward service (issue 19): tags parse in linear time, a model
output past a reward's text limit scores the reward's lowest value without being read, an item past
its time budget is a SYSTEM_ERROR while the batch goes on, and ``python -m reward_service`` busy
with such requests still drains within its grace period on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reward_service.app import reward_service
from reward_service.local_life.metrics import RATING
from reward_service.rewards._text import last_block, strip_blocks, tag_blocks
from reward_service.settings import RewardSettings
from rlyard.client import NO_RETRY
from rlyard.domain import ScoreStatus, ScoringItem, parse_spec
from rlyard.domain.convert import item_to_pb, score_from_pb
from rlyard.errors import ConfigError
from rlyard.reward.v1 import reward_pb2
from rlyard.reward_client import RewardClient
from rlyard.server import start_server
from rlyard.settings import ServerSettings

ROOT = Path(__file__).resolve().parents[2]
GT = {"answers": ["paris"], "tool_calls": [{"name": "search", "arguments": {"q": "paris"}}]}


@pytest.fixture
async def start_reward() -> AsyncIterator[Callable[..., Any]]:
    """Factory: a reward service on 127.0.0.1:0 with ``RewardSettings(**overrides)`` and a client."""
    started: list[Any] = []

    async def start(**overrides: Any) -> RewardClient:
        running = await start_server(reward_service(RewardSettings(**overrides)), ServerSettings())
        client = RewardClient(running.address, timeout=120.0, retry=NO_RETRY)
        started.append((running, client))
        return client

    yield start
    for running, client in started:
        await client.close()
        await running.stop(0)


# ---------------------------------------------------------------- linear-time tags
def _regex_blocks(text: str, tag: str) -> list[str]:
    return re.findall(rf"<{tag}>(.*?)</{tag}>", text, re.DOTALL)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["<think>", "</think>", "<think", "think>", "</", "a", "\n", "<<think>>"]),
                max_size=14).map("".join))
def test_tag_blocks_find_what_the_quadratic_regex_found(text: str) -> None:
    blocks = _regex_blocks(text, "think")
    assert tag_blocks(text, "think") == blocks
    assert strip_blocks(text, "think") == re.sub(r"<think>(.*?)</think>", "", text, flags=re.DOTALL)
    assert last_block(text, "think") == (blocks[-1].strip() if blocks else None)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["rating", "rated", " ", "\t", "of", ":", "=", "4", "4.5", "stars", "/5", "x"]),
                max_size=12).map("".join))
def test_the_rating_pattern_finds_what_the_backtracking_one_found(text: str) -> None:
    old = re.compile(r"(?:\brated|\brating)\s*(?:of|:|=)?\s*(\d(?:\.\d+)?)\b|\b(\d\.\d)\s*(?:stars?|★|/\s*5)",
                     re.IGNORECASE)
    assert RATING.findall(text) == old.findall(text)


async def test_unclosed_tags_are_scored_at_once_and_hold_up_no_one(start_reward: Callable[..., Any]) -> None:
    """``<think>`` × 100,000 (700 KB, under the text limit) under search_r1, and ``<tool_call>`` ×
    60,000 under tool_call_match: the ``<tag>(.*?)</tag>`` pattern took 5.2 s for 16,000 unclosed
    tags and grows with the square (about 4 minutes for 100,000), holding the whole service; parsed
    in one pass they take milliseconds, while another client's qa_em is answered."""
    client = await start_reward()
    other = RewardClient(client.target, timeout=30.0, retry=NO_RETRY)
    try:
        slow = asyncio.gather(
            client.score(ScoringItem("t", "<think>" * 100_000, ground_truth=GT), parse_spec({"search_r1": 1.0})),
            client.score(ScoringItem("c", "<tool_call>" * 60_000, ground_truth=GT),
                         parse_spec({"tool_call_match": 1.0})),
        )
        fast = await asyncio.wait_for(
            other.score(ScoringItem("q", "Paris", ground_truth=GT), parse_spec({"qa_em": 1.0})), 10)
        think, calls = await asyncio.wait_for(slow, 30)
    finally:
        await other.close()
    assert fast.total == 1.0
    assert think.status == ScoreStatus.OK and think.total == pytest.approx(-0.15)   # no answer, tags broken
    assert calls.status == ScoreStatus.OK and calls.total == -3.0                      # no closed block: r_min


# ---------------------------------------------------------------- text limits
async def test_an_output_past_the_text_limit_scores_each_rewards_lowest_value(
    start_reward: Callable[..., Any]
) -> None:
    """``<think>`` × 700,000 (4.9 MB) kept the service at 100% CPU for minutes; past the 1,000,000
    character limit it is not read: each reward gives its lowest value and says why."""
    client = await start_reward()
    spec = parse_spec({"search_r1": 1.0, "tool_call_match": 1.0, "qa_em": 1.0, "format": 1.0})
    item = ScoringItem("huge", "<think>" * 700_000, ground_truth=GT)
    result = await asyncio.wait_for(client.score(item, spec), 30)
    assert result.status == ScoreStatus.OK
    assert result.values == {"search_r1": pytest.approx(-0.2), "tool_call_match": -3.0, "qa_em": 0.0, "format": 0.0}
    assert result.total == pytest.approx(-3.2)
    for c in result.components:
        assert "4900000 characters" in c.explanation and "limit of 1000000" in c.explanation, c
    assert len(result.explanation) < 10_000          # explanations are cut, never the whole output


async def test_text_limits_are_set_per_reward(start_reward: Callable[..., Any]) -> None:
    client = await start_reward(max_text_chars=100, text_limits=("qa_em=1000",))
    answer = "Paris" + " " * 200
    result = await client.score(ScoringItem("i", answer, ground_truth=GT), parse_spec({"qa_em": 1.0, "qa_f1": 1.0}))
    assert result.values == {"qa_em": 1.0, "qa_f1": 0.0}          # qa_f1 keeps the service's limit of 100
    assert "limit of 100 " in result.components[1].explanation
    sql = await client.score(ScoringItem("s", "SELECT 1", ground_truth={"db_id": "x", "query": "SELECT 1"}),
                             parse_spec({"sql_execution": 1.0}))
    assert "limit of 100 " not in sql.error                       # 8 characters: read (then the tools fail)


def test_a_malformed_text_limit_is_refused_at_start_up() -> None:
    from rlyard.errors import ConfigError

    with pytest.raises(ConfigError, match="RLYARD_REWARD_TEXT_LIMITS: 'qa_em:5' is not name=chars"):
        RewardSettings(text_limits=("qa_em:5",))


# ---------------------------------------------------------------- the per-item budget
async def test_an_item_past_its_budget_is_a_system_error_and_the_batch_goes_on(
    start_reward: Callable[..., Any], chat_server: Any
) -> None:
    judge = chat_server({"hang": True}, {"hang": True})
    client = await start_reward(judge_endpoint=judge.url, item_timeout_s=0.5)
    items = [ScoringItem("judged", "Paris", ground_truth=GT), ScoringItem("qa", "Paris", ground_truth=GT)]
    request = reward_pb2.ScoreBatchRequest(items=[
        item_to_pb(items[0], parse_spec({"judge": 1.0})), item_to_pb(items[1], parse_spec({"qa_em": 1.0}))])
    started = time.monotonic()
    resp = await asyncio.wait_for(client.stub.ScoreBatch(request, timeout=30), 8)
    judged, qa = (score_from_pb(r) for r in resp.results)
    assert judged.status == ScoreStatus.SYSTEM_ERROR and judged.total == 0.0
    assert "budget of 0.5 s" in judged.error and "RLYARD_REWARD_ITEM_TIMEOUT_S" in judged.error
    assert qa.status == ScoreStatus.OK and qa.total == 1.0
    assert time.monotonic() - started < 5


# ---------------------------------------------------------------- SIGTERM while busy
async def test_a_busy_reward_service_process_drains_on_sigterm_within_its_grace(
    tmp_path: Path, chat_server: Any
) -> None:
    """``python -m reward_service`` in the middle of a batch (a judge that does not answer, and
    700 KB outputs of unclosed tags): SIGTERM ends it within the grace period and a little. With
    the quadratic tag pattern the service froze on such a batch and ignored SIGTERM."""
    judge = chat_server({"hang": True})
    ready_file = tmp_path / "ready.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLYARD")}
    env.update(PYTHONPATH=str(ROOT), RLYARD_PORT="0", RLYARD_READY_FILE=str(ready_file), RLYARD_GRACE_S="1",
               RLYARD_LOG_LEVEL="WARNING", RLYARD_REWARD_REWARDS="search_r1,judge",
               RLYARD_REWARD_JUDGE_ENDPOINT=judge.url)
    log = (tmp_path / "reward.log").open("wb")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "reward_service", cwd=tmp_path, env=env,
                                                stdout=log, stderr=log)
    try:
        async def ready() -> dict[str, Any]:
            while not ready_file.exists():
                assert proc.returncode is None, (tmp_path / "reward.log").read_text()
                await asyncio.sleep(0.02)
            return dict(json.loads(ready_file.read_text()))

        port = (await asyncio.wait_for(ready(), 60))["port"]
        items = [item_to_pb(ScoringItem("judged", "Paris", ground_truth=GT), parse_spec({"judge": 1.0}))]
        items += [item_to_pb(ScoringItem(f"think{i}", "<think>" * 100_000, ground_truth=GT),
                             parse_spec({"search_r1": 1.0})) for i in range(4)]
        async with RewardClient(f"127.0.0.1:{port}", timeout=60.0, retry=NO_RETRY) as client:
            call = asyncio.ensure_future(client.stub.ScoreBatch(reward_pb2.ScoreBatchRequest(items=items), timeout=60))

            async def judge_asked() -> None:
                while True:
                    if judge.requests:
                        return
                    await asyncio.sleep(0.02)

            await asyncio.wait_for(judge_asked(), 10)          # the batch is in flight
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), 10)
            stopped_after = time.monotonic() - started
            with pytest.raises(grpc.aio.AioRpcError):         # the unfinished batch was cut off
                await call
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()
    assert code == 0, (tmp_path / "reward.log").read_text()
    assert stopped_after < 1 + 3, f"stopped {stopped_after:.1f} s after SIGTERM (grace 1 s)"


def test_tool_targets_may_name_replicas_and_a_malformed_list_is_refused() -> None:
    settings = RewardSettings(sql_tools_target="routed:///sql-tools-headless:50051")
    assert "routed:///sql-tools-headless:50051" in settings.tool_targets
    with pytest.raises(ConfigError, match=r"RLYARD_REWARD_SQL_TOOLS_TARGET: .* is not host:port"):
        RewardSettings(sql_tools_target="a:50051,b")
