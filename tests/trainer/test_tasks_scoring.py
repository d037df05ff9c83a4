"""Task files, the reproducible task stream, and scoring rollouts through a real reward
service whose SQL tool server can die."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reward_service.app import reward_service
from reward_service.settings import RewardSettings
from rlyard.client import ToolClient
from rlyard.domain import Task, Trajectory, TrajectoryStatus, Turn
from rlyard.errors import ConfigError
from rlyard.reward_client import RewardClient
from rlyard.server import start_server
from rlyard.settings import ServerSettings
from tool_servers.app import tool_service
from tool_servers.settings import ToolServerSettings
from tool_servers.sql.settings import SqlSettings
from trainer.scoring import score_trajectories
from trainer.tasks import TaskSampler, load_tasks, openai_tools
from trainer.types import RolloutTrajectory

ROOT = Path(__file__).resolve().parents[2]
DB_DIR = ROOT / "data" / "spider" / "database"


async def test_tasks_get_the_tool_servers_schemas(tmp_path: Path) -> None:
    server = await start_server(tool_service(ToolServerSettings(), [SqlSettings(db_dir=DB_DIR)]), ServerSettings())
    try:
        async with ToolClient(server.address) as client:
            tools = openai_tools(await client.list_tools())
    finally:
        await server.stop(0)
    assert [t["function"]["name"] for t in tools] == ["sql_query", "list_tables", "describe_table"]
    assert tools[0]["function"]["parameters"]["required"] == ["query"]
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in [
        {"task_id": "a", "question": "How many singers?", "context": {"db_id": "concert_singer"},
         "ground_truth": {"db_id": "concert_singer", "query": "SELECT count(*) FROM singer"}},
        {"task_id": "b", "messages": [{"role": "user", "content": "hi"}], "tools": ["sql_query"],
         "template": "count_all", "slice": 2, "extra": {"not": "a label"}},
    ]) + "\n")
    a, b = load_tasks(path, tools)
    assert a.messages[0]["role"] == "system" and a.messages[1] == {"role": "user", "content": "How many singers?"}
    assert a.context == {"db_id": "concert_singer"} and len(a.tools) == 3
    assert [t["function"]["name"] for t in b.tools] == ["sql_query"]
    # the line's other scalar fields are labels (the memory's task type reads one); the task's own are not
    assert a.labels == {} and b.labels == {"template": "count_all", "slice": "2"}
    path.write_text('{"task_id": "x"}\n')
    with pytest.raises(ConfigError, match="needs 'question' or 'messages'"):
        load_tasks(path, tools)


def test_task_stream_is_a_reproducible_epoch_shuffle() -> None:
    tasks = [Task(str(i), []) for i in range(5)]
    sampler = TaskSampler(tasks, seed=7)
    first = [t.task_id for t in sampler.take(0, 5)]
    assert sorted(first) == ["0", "1", "2", "3", "4"]          # an epoch visits every task once
    assert [t.task_id for t in sampler.take(2, 3)] == first[2:5]  # the cursor alone resumes it
    assert [t.task_id for t in TaskSampler(tasks, seed=7).take(0, 12)] == [t.task_id for t in sampler.take(0, 12)]


def _trajectory(answer: str, group: int, sample: int) -> RolloutTrajectory:
    gold = {"db_id": "concert_singer", "query": "SELECT count(*) FROM singer"}
    record = Trajectory("t", "task", (Turn(0, "assistant", f"<answer>{answer}</answer>"),), answer)
    return RolloutTrajectory(Task("task", [], ground_truth=gold), group, sample, [1, 2, 3], record=record,
                             final_answer=answer)


async def test_scores_fill_rewards_and_system_errors_drop_trajectories() -> None:
    tools = await start_server(tool_service(ToolServerSettings(), [SqlSettings(db_dir=DB_DIR)]), ServerSettings())
    reward = await start_server(reward_service(RewardSettings(sql_tools_target=tools.address, tool_timeout_s=2)),
                                ServerSettings())
    batch = [_trajectory("SELECT count(*) FROM singer", 0, 0), _trajectory("SELECT 1", 0, 1)]
    infra = _trajectory("SELECT count(*) FROM singer", 1, 0)
    infra.status = TrajectoryStatus.INFRA_FAILED
    try:
        async with RewardClient(reward.address, timeout=30) as client:
            counts = await score_trajectories(client, [*batch, infra], {"sql_execution": 1.0}, step=3)
            assert counts == {"scored": 2, "reward_system_errors": 0}
            assert [t.reward for t in batch] == [1.0, 0.0] and infra.reward is None
            assert batch[0].reward_components == {"sql_execution": 1.0}
            await tools.stop(0)
            late = [_trajectory("SELECT count(*) FROM singer", 2, 0)]
            counts = await score_trajectories(client, late, {"sql_execution": 1.0}, step=4)
    finally:
        await reward.stop(0)
    assert counts == {"scored": 0, "reward_system_errors": 1}
    assert late[0].status == TrajectoryStatus.INFRA_FAILED and late[0].reward is None
    assert late[0].infra_error.startswith(f"reward service at {reward.address}: sql_execution: ")


async def test_a_reward_service_that_fails_the_call_fails_the_steps_trajectories(tmp_path: Path) -> None:
    """Past the client's retries the failed ScoreBatch marks every trajectory INFRA_FAILED with the
    service's address and code (it raised UNAVAILABLE out of the step); a call the service refuses
    (a bad spec) is the config's error and raises."""
    import socket

    from rlyard.client import NO_RETRY
    from trainer.scoring import RewardRequestError

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{sock.getsockname()[1]}"
    batch = [_trajectory("SELECT 1", 0, 0), _trajectory("SELECT 2", 0, 1)]
    try:
        async with RewardClient(address, timeout=5, retry=NO_RETRY) as client:
            counts = await score_trajectories(client, batch, {"sql_execution": 1.0}, step=2)
    finally:
        sock.close()
    assert counts == {"scored": 0, "reward_system_errors": 2}
    assert all(t.status == TrajectoryStatus.INFRA_FAILED and t.reward is None for t in batch)
    assert all(t.infra_error.startswith(f"reward service at {address}: UNAVAILABLE: ") for t in batch)
    reward = await start_server(reward_service(RewardSettings(rewards=("qa_em",))), ServerSettings())
    try:
        async with RewardClient(reward.address, timeout=30) as client:
            with pytest.raises(RewardRequestError, match="INVALID_ARGUMENT: unknown reward 'sql_execution'"):
                await score_trajectories(client, [_trajectory("SELECT 1", 0, 0)], {"sql_execution": 1.0}, step=2)
    finally:
        await reward.stop(0)
