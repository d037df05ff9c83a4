"""The local-life metric rewards end to end: generated tasks over a real corpus, their gold paths
replayed through a real POI tool server, scored by a real reward service that reads the records
through that server's ``poi_detail``."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from envs.local_life import TaskSplit, generate_split
from envs.local_life.judge import judge_spec
from envs.local_services.poi_corpus import build_corpus
from reward_service.app import reward_service
from reward_service.registry import RewardContext
from reward_service.rewards._local_life import LocalLifeParams, retrieved_ids, score_item
from reward_service.rewards.judge import JudgeParams, judge_messages
from reward_service.settings import RewardSettings
from reward_service.types import RewardInputError, RewardSystemError
from rlyard.client import RetryPolicy, ToolClient
from rlyard.domain import ScoreStatus, ScoringItem, ToolCall, ToolResult, Trajectory, TrajectoryStatus, Turn, parse_spec
from rlyard.reward_client import RewardClient
from rlyard.server import RunningServer, start_server
from rlyard.settings import ServerSettings

POI_TOOLS = ("search", "poi_detail", "nearby")
METRICS = {"poi_correctness": 1.0, "poi_completeness": 1.0, "poi_faithfulness": 1.0}


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("poi")
    build_corpus(folder, seed=0, merchants=3_000)
    return folder


@pytest.fixture(scope="module")
def split(corpus_dir: Path) -> TaskSplit:
    return generate_split(corpus_dir / "poi.sqlite", seed=0, n_train=12, n_heldout=6)


@pytest.fixture
async def poi_server(start_tools: Callable[..., Awaitable[RunningServer]], corpus_dir: Path,
                     tmp_path: Path) -> RunningServer:
    return await start_tools(tools=POI_TOOLS, poi={"dir": corpus_dir, "index_dir": tmp_path / "index"})


async def replay(client: ToolClient, task: dict[str, Any]) -> tuple[list[Turn], dict[str, dict[str, Any]]]:
    """The task's gold path as a trajectory's turns (one call per round), and every record the tools showed."""
    turns: list[Turn] = [Turn(0, "user", task["question"])]
    shown: dict[str, dict[str, Any]] = {}
    for i, call in enumerate(task["gold_path"]):
        cid = f"c{i}"
        result = await client.call_tool(call["tool"], call["arguments"])
        assert not result.is_error, result.content[0].text
        text = result.content[0].text
        structured = result.structured
        for rec in structured.get("results", [structured]):
            shown[rec["poi_id"]] = rec
        said = json.dumps({"name": call["tool"], "arguments": call["arguments"]})    # as the engine records it
        turns.append(Turn(len(turns), "assistant", f"<tool_call>{said}</tool_call>",
                                tool_calls=(ToolCall(cid, call["tool"], json.dumps(call["arguments"])),)))
        turns.append(Turn(len(turns), "tool", text,
                                tool_results=(ToolResult.of_text(text, structured).answering(cid, call["tool"]),)))
    return turns, shown


def answer(ids: list[str], shown: dict[str, dict[str, Any]]) -> str:
    return "\n".join(f"{i + 1}. {shown[p]['name']} [{p}] rated {shown[p]['rating']:.1f}, ¥{shown[p]['avg_price']:.0f}"
                     for i, p in enumerate(ids))


def item(item_id: str, task: dict[str, Any], turns: list[Turn], text: str) -> ScoringItem:
    traj = Trajectory(item_id, task["task_id"], (*turns, Turn(len(turns), "assistant", text)),
                            final_answer=text, status="COMPLETED")
    gt = {k: task[k] for k in ("question", "checklist", "gold_answers", "anchor", "request_count")}
    return ScoringItem(item_id, trajectory=traj, ground_truth=gt)


async def test_metrics_agree_with_the_generator_through_the_service(
        poi_server: RunningServer, make_client: Callable[..., ToolClient], split: TaskSplit) -> None:
    client = make_client(poi_server)
    running = await start_server(reward_service(RewardSettings(poi_tools_target=poi_server.address)), ServerSettings())
    items: list[ScoringItem] = []
    expect: list[tuple[float, float, float]] = []
    try:
        for t, task in enumerate(split.train[:8] + split.heldout[:4]):
            turns, shown = await replay(client, task)
            gold = task["gold_answers"]
            n = task["request_count"]
            assert set(gold) <= set(shown), "the gold path shows every gold answer"
            assert retrieved_ids(item("x", task, turns, "").trajectory) == set(shown)
            # the right answer: as many gold POIs as asked for, with their true rating and price
            items.append(item(f"{t}-gold", task, turns, answer(gold[:n], shown)))
            expect.append((1.0, 1.0, 1.0))
            # the same answer without having looked: correct POIs, but none retrieved
            items.append(item(f"{t}-blind", task, turns[:1], answer(gold[:1], shown)))
            expect.append((0.0, 1.0 / min(n, len(gold)), 0.0))
            # no final answer (truncated): the ids in its tool calls are not recommendations
            unanswered = item(f"{t}-unanswered", task, turns, "")
            assert unanswered.trajectory is not None
            cut = dataclasses.replace(unanswered.trajectory, turns=tuple(turns), status=TrajectoryStatus.TRUNCATED)
            items.append(dataclasses.replace(unanswered, trajectory=cut))
            expect.append((0.0, 0.0, 0.0))
            # every other POI the tools showed breaks the checklist: cited alone it is wrong
            others = [p for p in shown if p not in gold and p != (task["anchor"] or {}).get("poi_id")]
            items += [item(f"{t}-wrong-{p}", task, turns, f"Try {p}.") for p in others[:3]]
            expect += [(0.0, -1.0, 1.0)] * len(others[:3])
        assert sum("wrong" in i.item_id for i in items) >= 10
        spec = parse_spec(METRICS)
        async with RewardClient(running.address, timeout=60.0, retry=RetryPolicy(max_attempts=1)) as rc:
            results = await rc.score_batch(items, spec)
    finally:
        await running.stop(0)
    for it, r, (c, comp, faith) in zip(items, results, expect, strict=True):
        assert r.status == ScoreStatus.OK, (it.item_id, r.error)
        got = {x.name: x.value for x in r.components}
        assert got["poi_correctness"] == c, (it.item_id, [x.explanation for x in r.components])
        assert got["poi_faithfulness"] == pytest.approx(faith), it.item_id
        if comp >= 0:
            assert got["poi_completeness"] == pytest.approx(comp), it.item_id
        else:   # a wrong POI meets some but not all of the items: strictly between 0 and 1 / target
            assert 0.0 <= got["poi_completeness"] < 1.0, it.item_id


async def test_system_and_input_errors(poi_server: RunningServer, split: TaskSplit) -> None:
    task = split.train[0]
    gt = {k: task[k] for k in ("checklist", "gold_answers", "anchor")}
    ctx = RewardContext(RewardSettings(poi_tools_target=poi_server.address, tool_timeout_s=2.0))
    try:
        with pytest.raises(RewardInputError, match="checklist"):
            await score_item(ctx, ScoringItem("i", prediction="SH000001", ground_truth={"gold_answers": ["x"]}),
                             LocalLifeParams())
        await poi_server.stop(0)
        with pytest.raises(RewardSystemError, match="POI tool server"):
            await score_item(ctx, ScoringItem("i", prediction=f"[{task['gold_answers'][0]}]", ground_truth=gt),
                             LocalLifeParams())
    finally:
        await ctx.close()


def test_judge_prompt_carries_the_retrieved_context(split: TaskSplit) -> None:
    task = split.train[0]
    text = "[SH000001] rated 4.6"
    turns = [Turn(0, "user", task["question"]), Turn(1, "assistant", "", tool_calls=()),
             Turn(2, "tool", "[SH000001] Shop · rating 4.6")]
    scored = ScoringItem("i", trajectory=Trajectory("t", "x", tuple(turns), final_answer=text),
                         ground_truth={"question": task["question"], "answer": "SH000001"})
    params = JudgeParams(**{k: v for k, v in judge_spec("faithfulness")["judge"].items() if k != "weight"})
    (_system, user) = judge_messages(scored, params)
    assert "[SH000001] Shop · rating 4.6" in user["content"] and task["question"] in user["content"]
    assert "FAITHFULNESS" in user["content"] and "Score: <number>" in user["content"]
