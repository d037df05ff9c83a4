"""The graph memory around an RL step (``trainer/memory_stage.py``) against a real memory service
(127.0.0.1, port 0, a SQLite file), a real SQL tool server and the tiny policy: retrieval into the
prompts of half of each group, recording, the utility update, distillation, and a service that
is stopped and comes back."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rlyard.client import ToolClient
from rlyard.domain import Task, TextPart, ToolCall, ToolResult, Trajectory, TrajectoryStatus, Turn
from rlyard.memory_client import MemoryClient
from rlyard.server import RunningServer
from trainer.config import MemoryConfig, MemoryDistillConfig, RolloutConfig
from trainer.memory_stage import StageMemory
from trainer.policy.hf import HFPolicy
from trainer.rollout import RolloutEngine
from trainer.sampler import LocalSampler
from trainer.types import RolloutTrajectory

QUESTION = "How many singers are there?"
COUNT = "SELECT count(*) FROM singer"


def _seed_path(i: int, good: bool) -> Trajectory:
    """A recorded episode of type ``count``: a good one runs the query and answers, a bad one answers
    without a tool (distillation then learns "begin by calling sql_query")."""
    turns: list[Turn] = [Turn(0, "user", QUESTION)]
    if good:
        call = ToolCall(f"seed{i}/c0", "sql_query", json.dumps({"query": COUNT}))
        turns += [Turn(1, "assistant", "", tool_calls=(call,)),
                  Turn(2, "tool", "6", tool_results=(ToolResult((TextPart("6"),), call_id=call.call_id,
                                                                name="sql_query"),)),
                  Turn(3, "assistant", f"<answer>{COUNT}</answer>")]
    else:
        turns.append(Turn(1, "assistant", "<answer>SELECT 1</answer>"))
    return Trajectory(f"seed-{i}", "seed", tuple(turns), COUNT if good else "SELECT 1", TrajectoryStatus.COMPLETED)


async def _seeded(client: MemoryClient) -> list[str]:
    """Four paths recorded and distilled: the ids of the meta-cognitions of type ``count``."""
    for i in range(4):
        await client.record_trajectory(_seed_path(i, good=i < 2), 1.0 if i < 2 else 0.0, "count", QUESTION)
    created = await client.distill("count")
    assert created, "the seeded paths give at least one meta-cognition"
    return [m.id for m in created]


def _task(task_id: str, kind: str) -> Task:
    return Task(task_id, [{"role": "system", "content": "Answer with one SQL query."},
                                {"role": "user", "content": QUESTION}],
                      context={"db_id": "concert_singer"}, labels={"template": kind})


@pytest.fixture(scope="module")
def policy(tiny_model_dir: Path) -> HFPolicy:
    return HFPolicy(tiny_model_dir)


@pytest.fixture
async def engine(policy: HFPolicy, start_tools: Callable[..., Any],
                 make_client: Callable[..., ToolClient]) -> Any:
    tools: RunningServer = await start_tools()
    config = RolloutConfig(group_size=4, prompts_per_step=2, max_turns=1, max_new_tokens_per_turn=6,
                           max_total_tokens=1000)
    engine = RolloutEngine(LocalSampler(policy), policy.tokenizer, make_client(tools), config, seed=0)
    yield engine
    await engine.aclose()
    await engine.sampler.aclose()


def _memory(**overrides: Any) -> MemoryConfig:
    values: dict[str, Any] = {"enabled": True, "top_k": 2, "token_budget": 400, "task_type": "label:template",
                              "retry_window_s": 0.2, "timeout_s": 5.0, "distill": MemoryDistillConfig(every=2)}
    return MemoryConfig(**{**values, **overrides})


def _set_rewards(trajectories: list[RolloutTrajectory], rewards: dict[tuple[int, int], float]) -> None:
    for t in trajectories:
        t.reward = rewards[(t.group_id, t.sample_index)]


async def test_half_of_each_group_reads_the_memories_and_their_gap_updates_the_utilities(
    memory_servers: Any, engine: RolloutEngine, policy: HFPolicy
) -> None:
    server = memory_servers.start()
    async with MemoryClient(server.address, timeout=10.0) as client:
        ids = await _seeded(client)
        memory = StageMemory(client, _memory(), policy.tokenizer, group_size=4)
        # a question of type "count" finds the memories; one of a type the memory has never seen gets none
        trajectories = await memory.rollout(engine, [_task("q1", "count"), _task("q2", "other")], step=1)
        assert [(t.group_id, t.sample_index) for t in trajectories] == [(g, s) for g in (0, 1) for s in range(4)]
        shown = [m.meta_cognition.id for m in trajectories[0].memories]
        assert shown and set(shown) <= set(ids) and len(shown) <= 2
        assert [bool(t.memories) for t in trajectories] == [True, True, False, False] + [False] * 4
        assert trajectories[1].memories == trajectories[0].memories
        prompt = policy.tokenizer.decode(trajectories[0].prompt_ids)
        for item in trajectories[0].memories:
            assert " ".join(item.meta_cognition.text.split()) in prompt        # in the prompt the policy read
        assert "Strategies learned" in prompt
        assert "Strategies learned" not in policy.tokenizer.decode(trajectories[2].prompt_ids)
        assert trajectories[0].record.metadata["memory_ids"] == ",".join(shown)
        assert "memory_ids" not in trajectories[2].record.metadata
        assert "Strategies learned" in trajectories[0].record.turns[0].text      # the record shows it too

        # rewards by hand: the half with memory 1.0 and 0.5 (mean 0.75), without 0.5 and 0.5 (0.5): ΔR = 0.25
        _set_rewards(trajectories, {(0, 0): 1.0, (0, 1): 0.5, (0, 2): 0.5, (0, 3): 0.5,
                                    (1, 0): 0.0, (1, 1): 1.0, (1, 2): 0.0, (1, 3): 0.0})
        before = (await client.stats()).num_trajectories
        metrics = await memory.feedback(trajectories, step=1)
        assert metrics["memory/recorded"] == 8.0 and metrics["memory/record_backlog"] == 0.0
        assert metrics["memory/utility_updates"] == float(len(shown)) and metrics["memory/failures"] == 0.0
        assert metrics["memory/hit_rate"] == 0.5
        assert metrics["memory/reward_with"] == 0.75 and metrics["memory/reward_without"] == 0.5
        assert metrics["memory/utility_mean"] == pytest.approx(0.5)              # the prior, as retrieved
        assert "memory/distilled" not in metrics                                   # every 2 steps: not step 1
        assert (await client.stats()).num_trajectories == before + 8
        # the service's REINFORCE step from the prior 0.5, baseline 0, η 0.5: 0.5 + 0.5 · 0.25
        again = await client.retrieve(QUESTION, "count", top_k=len(ids))
        utilities = {s.meta_cognition.id: s.meta_cognition.utility for s in again}
        assert all(utilities[mid] == pytest.approx(0.625) for mid in shown)
        assert all(utilities[mid] == pytest.approx(0.5) for mid in set(ids) - set(shown))
        assert "memory/distilled" in await memory.feedback([], step=2)           # step 2: Distill ran


async def test_exploration_tries_the_meta_cognition_without_feedback_before_trusting_the_one_with(
    memory_servers: Any, engine: RolloutEngine, policy: HFPolicy
) -> None:
    server = memory_servers.start()
    async with MemoryClient(server.address, timeout=10.0) as client:
        ids = await _seeded(client)
        assert len(ids) >= 2, "the seeded paths give at least two meta-cognitions"
        greedy = StageMemory(client, _memory(top_k=1), policy.tokenizer, group_size=4)
        explore = StageMemory(client, _memory(top_k=1, explore=1.0), policy.tokenizer, group_size=4)
        first = await greedy.rollout(engine, [_task("q1", "count")], step=1)
        shown = first[0].memories[0].meta_cognition.id
        # it helped a little (ΔR = 0.25: utility 0.5 -> 0.625, one use): the service now ranks it first
        _set_rewards(first, {(0, 0): 1.0, (0, 1): 0.5, (0, 2): 0.5, (0, 3): 0.5})
        assert (await greedy.feedback(first, step=1))["memory/utility_updates"] == 1.0
        ranked = await client.retrieve(QUESTION, "count", top_k=len(ids))
        assert ranked[0].meta_cognition.id == shown and ranked[0].meta_cognition.uses == 1
        again = await greedy.rollout(engine, [_task("q2", "count")], step=2)
        assert again[0].memories[0].meta_cognition.id == shown
        # with exploration the best untried one goes first: relevance · (0.5 + 1) beats relevance · (0.625 + 1/√2)
        untried = next(s for s in ranked if s.meta_cognition.uses == 0)
        expected = max(ranked, key=lambda s: s.score + s.relevance / (1 + s.meta_cognition.uses) ** 0.5)
        assert expected.meta_cognition.id == untried.meta_cognition.id
        tried = await explore.rollout(engine, [_task("q3", "count")], step=2)
        assert [m.meta_cognition.id for m in tried[0].memories] == [untried.meta_cognition.id]
        assert [bool(t.memories) for t in tried] == [True, True, False, False]


async def test_a_memory_service_that_stops_costs_the_step_its_memories_and_loses_no_trajectory(
    memory_servers: Any, engine: RolloutEngine, policy: HFPolicy, caplog: pytest.LogCaptureFixture
) -> None:
    server = memory_servers.start()
    port = int(server.address.rsplit(":", 1)[1])
    async with MemoryClient(server.address, timeout=10.0) as client:
        await _seeded(client)
        seeded = (await client.stats()).num_trajectories
        memory = StageMemory(client, _memory(), policy.tokenizer, group_size=4)
        memory_servers.stop(server)
        with caplog.at_level(logging.WARNING, logger="trainer.memory_stage"):
            trajectories = await memory.rollout(engine, [_task("q1", "count"), _task("q2", "count")], step=1)
            assert len(trajectories) == 8 and not any(t.memories for t in trajectories)   # rolled out without
            _set_rewards(trajectories, {(g, s): float(s % 2) for g in (0, 1) for s in range(4)})
            trajectories[7].status, trajectories[7].reward = TrajectoryStatus.INFRA_FAILED, None
            down = await memory.feedback(trajectories, step=1)
        assert down["memory/failures"] == 3.0          # two retrievals, then one recording (the rest wait)
        assert down["memory/recorded"] == 0.0 and down["memory/record_backlog"] == 7.0   # the scored ones
        assert down["memory/hit_rate"] == 0.0 and "memory/utility_updates" not in down
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(f"memory service at {server.address}: retrieve failed: UNAVAILABLE" in w for w in warnings)
        assert any("record_trajectory failed: UNAVAILABLE" in w for w in warnings)

        memory_servers.start(port=port)                 # back on its port, over the same SQLite file
        await asyncio.wait_for(client.channel.channel_ready(), 10)   # the channel's reconnect backoff
        back = await memory.feedback([], step=3)
        assert back["memory/recorded"] == 7.0 and back["memory/record_backlog"] == 0.0
        assert back["memory/failures"] == 0.0
        assert (await client.stats()).num_trajectories == seeded + 7        # nothing lost
        # a trajectory the service refuses (no turns) is dropped and counted, not kept for ever
        empty = RolloutTrajectory(task=_task("q3", "count"), group_id=0, sample_index=0, prompt_ids=[1], reward=1.0,
                                  record=Trajectory("q3/empty"))
        refused = await memory.feedback([empty], step=5)
        assert refused["memory/records_dropped"] == 1.0 and refused["memory/record_backlog"] == 0.0
        assert refused["memory/failures"] == 1.0


async def test_the_backlog_keeps_the_newest_within_its_limit(
    memory_servers: Any, engine: RolloutEngine, policy: HFPolicy
) -> None:
    server = memory_servers.start()
    async with MemoryClient(server.address, timeout=10.0) as client:
        memory = StageMemory(client, _memory(max_backlog=3), policy.tokenizer, group_size=4)
        memory_servers.stop(server)
        trajectories = await memory.rollout(engine, [_task("q1", "count")], step=1)
        _set_rewards(trajectories, {(0, s): 1.0 for s in range(4)})
        metrics = await memory.feedback(trajectories, step=1)
    assert metrics["memory/record_backlog"] == 3.0 and metrics["memory/records_dropped"] == 1.0
    assert [r.trajectory.trajectory_id for r in memory.backlog] == [t.record.trajectory_id for t in trajectories[1:]]


async def test_recordings_are_kept_apart_by_run_and_idempotent_within_one(
    memory_servers: Any, engine: RolloutEngine, policy: HFPolicy
) -> None:
    """The memory outlives runs: the same task, step and sample of another run is another trajectory,
    while a step recorded again by the same run (a resumed run redoing it) counts once."""
    server = memory_servers.start()
    async with MemoryClient(server.address, timeout=10.0) as client:
        memory = StageMemory(client, _memory(), policy.tokenizer, group_size=4)
        trajectories = await memory.rollout(engine, [_task("q1", "count")], step=1)
        _set_rewards(trajectories, {(0, s): 1.0 for s in range(4)})
        for run_id in ("run-a", "run-b", "run-a"):
            assert (await memory.feedback(trajectories, step=1, run_id=run_id))["memory/recorded"] == 4.0
        assert (await client.stats()).num_trajectories == 8
