"""GRPO with the graph memory through the composition root: configs/memory_sql.yaml's memory section
on the tiny policy with real services on 127.0.0.1 (tool server, reward service, memory service over
a SQLite file), a memory service stopped in the middle of the run and started again, and
evaluations (``evaluate(memory=True)``, ``rlyard eval --memory``) prompted with the memory."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from rlyard.domain import TextPart, ToolCall, ToolResult, Trajectory, TrajectoryStatus, Turn
from rlyard.errors import ConfigError
from rlyard.memory_client import MemoryClient
from trainer.compose import open_stack
from trainer.config import ExperimentConfig, MemoryConfig, parse_config
from trainer.events import MetricsEvent
from trainer.runner import run_experiment

ROOT = Path(__file__).resolve().parents[2]
DB_TYPE = "concert_singer"          # the memory's task type: configs/memory_sql.yaml takes context:db_id


@pytest.fixture
def tasks(tmp_path: Path) -> Path:
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps({"task_id": f"q{i}", "question": f"how many singer {i}", "tools": [],
                                        "context": {"db_id": DB_TYPE}, "ground_truth": {"answers": [str(i)]}}) + "\n"
                            for i in range(4)))
    return path


def _seed(memory_servers: Any, db: Path) -> int:
    """Record four paths of the type (two run a query and succeed, two do not) and distill them into
    the store at ``db``; the number of meta-cognitions."""
    server = memory_servers.start(db=db)

    async def seed() -> int:
        async with MemoryClient(server.address, timeout=10.0) as client:
            for i in range(4):
                call = ToolCall(f"s{i}/c", "sql_query", '{"query": "SELECT count(*) FROM singer"}')
                turns = [Turn(0, "user", "how many singer")]
                if i < 2:
                    turns += [Turn(1, "assistant", "", tool_calls=(call,)),
                              Turn(2, "tool", "6", tool_results=(ToolResult((TextPart("6"),), call_id=call.call_id,
                                                                            name="sql_query"),)),
                              Turn(3, "assistant", "<answer>6</answer>")]
                else:
                    turns.append(Turn(1, "assistant", "<answer>1</answer>"))
                trajectory = Trajectory(f"seed-{i}", "seed", tuple(turns), "6" if i < 2 else "1",
                                        TrajectoryStatus.COMPLETED)
                await client.record_trajectory(trajectory, 1.0 if i < 2 else 0.0, DB_TYPE, "how many singer")
            return len(await client.distill(DB_TYPE))

    created: int = memory_servers.thread.run(seed(), timeout=60)
    memory_servers.stop(server)
    assert created >= 1
    return created


def _config(model_dir: Path, tasks: Path, judge_url: str, steps: int, memory: dict[str, Any]) -> ExperimentConfig:
    """configs/memory_sql.yaml's memory section and RL stage, cut to the tiny policy and a few short
    steps; the reward adds a scripted judge so that the untrained policy's samples differ."""
    raw = yaml.safe_load((ROOT / "configs" / "memory_sql.yaml").read_text())
    assert raw["memory"]["enabled"] and raw["memory"]["task_type"] == "context:db_id"
    (rl,) = [s for s in raw["stages"] if s["kind"] == "rl"]
    judge = {"weight": 0.1, "backend": "openai", "endpoint": judge_url, "model": "grader", "require_reference": False}
    rl.update(steps=steps, tasks={"path": str(tasks)}, reward={"qa_em": 1.0, "judge": judge})
    rl["rollout"].update(group_size=4, prompts_per_step=2, max_turns=1, max_new_tokens_per_turn=8,
                         max_total_tokens=1000)
    rl["algorithm"].update(micro_batch_size=4, updates_per_batch=1)
    raw.update(model={"path": str(model_dir)}, stages=[rl], checkpoint={"every_steps": 1, "keep": 1})
    raw["memory"].update(token_budget=400, **memory)
    return parse_config(raw, "configs/memory_sql.yaml")


def _memory_values(events: list[Any]) -> list[dict[str, float]]:
    return [{k: v for k, v in e.values.items() if k.startswith("memory/")} for e in events
            if isinstance(e, MetricsEvent)]


def test_grpo_with_the_embedded_memory_records_updates_and_shows_its_memories(
    tiny_model_dir: Path, tasks: Path, tmp_path: Path, chat_server: Any, memory_servers: Any
) -> None:
    db = tmp_path / "memory.sqlite"
    created = _seed(memory_servers, db)
    judge = chat_server(*(f"Score: {s}\nReason: scripted." for s in (0, 9, 3, 6) * 4))
    config = _config(tiny_model_dir, tasks, judge.url, steps=2, memory={"embedded": {"db_url": f"sqlite:///{db}"}})
    events: list[Any] = []
    with open_stack(config) as stack:
        assert stack.services.memory.startswith("127.0.0.1:") and stack.services.memory_settings is not None
        report = run_experiment(config, tmp_path / "run", stack=stack, on_event=events.append)
        stats = stack.run(stack.memory_client.stats()) if stack.memory_client else None
    assert report["state"] == "SUCCEEDED" and report["steps"] == 2
    values = _memory_values(events)
    for step in values:
        assert step["memory/hit_rate"] == 1.0 and step["memory/failures"] == 0.0
        assert step["memory/recorded"] == 8.0 and step["memory/record_backlog"] == 0.0
        assert 1.0 <= step["memory/shown"] <= created and step["memory/utility_updates"] == step["memory/shown"]
        assert 0.0 <= step["memory/reward_with"] <= 1.0 and 0.0 <= step["memory/reward_without"] <= 1.0
        assert 0 < step["memory/prompt_tokens"] <= 400
    assert "memory/distilled" not in values[0] and "memory/distilled" in values[1]   # distill: {every: 2}
    assert stats is not None and stats.num_trajectories == 4 + 16
    samples = (tmp_path / "run" / "samples.md").read_text()
    assert "memories shown:" in samples and "Strategies learned from earlier attempts" in samples
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("memory/hit_rate" in line for line in lines)
    assert (tmp_path / "run" / "curves" / "memory.png").is_file()


def test_a_memory_service_stopped_mid_run_costs_steps_their_memories_not_the_run(
    tiny_model_dir: Path, tasks: Path, tmp_path: Path, chat_server: Any, memory_servers: Any
) -> None:
    """Stopped after step 1: step 2 rolls out without memory, counts its failures and keeps its
    trajectories; started again on its port after step 2: step 3 retrieves again and records the
    kept trajectories with its own. Every trajectory of the run reaches the memory."""
    db = tmp_path / "memory.sqlite"
    _seed(memory_servers, db)
    server = memory_servers.start(db=db)
    port = int(server.address.rsplit(":", 1)[1])
    judge = chat_server(*(f"Score: {s}\nReason: scripted." for s in (0, 9, 3, 6) * 6))
    config = _config(tiny_model_dir, tasks, judge.url, steps=3, memory={"target": server.address})
    events: list[Any] = []
    with open_stack(config) as stack:
        client = stack.memory_client
        assert client is not None

        def on_event(event: Any) -> None:
            events.append(event)
            if isinstance(event, MetricsEvent) and event.step == 1:
                memory_servers.stop(server)
            if isinstance(event, MetricsEvent) and event.step == 2:
                memory_servers.start(db=db, port=port)
                stack.run(asyncio.wait_for(client.channel.channel_ready(), 10))

        report = run_experiment(config, tmp_path / "run", stack=stack, on_event=on_event)
        stats = stack.run(client.stats())
    assert report["state"] == "SUCCEEDED" and report["steps"] == 3
    first, down, back = _memory_values(events)
    assert first["memory/hit_rate"] == 1.0 and first["memory/recorded"] == 8.0 and first["memory/failures"] == 0.0
    assert down["memory/hit_rate"] == 0.0 and down["memory/recorded"] == 0.0
    assert down["memory/failures"] == 4.0           # two retrievals, the first recording, the step's Distill
    assert down["memory/record_backlog"] == 8.0 and "memory/utility_updates" not in down
    assert back["memory/hit_rate"] == 1.0 and back["memory/failures"] == 0.0
    assert back["memory/recorded"] == 16.0 and back["memory/record_backlog"] == 0.0
    assert stats.num_trajectories == 4 + 24                 # nothing lost
    step2 = [e.values for e in events if isinstance(e, MetricsEvent)][1]
    assert step2["trajectories"] == 8 and step2["infra_failed"] == 0.0       # the rollouts themselves went on


def test_an_evaluation_prompts_every_task_with_the_memory_and_changes_nothing_in_it(
    tiny_model_dir: Path, tasks: Path, tmp_path: Path, memory_servers: Any
) -> None:
    from trainer.evaluate import evaluate

    db = tmp_path / "memory.sqlite"
    _seed(memory_servers, db)
    server = memory_servers.start(db=db)
    config = _config(tiny_model_dir, tasks, "http://127.0.0.1:1/v1", steps=1, memory={"target": server.address})
    with open_stack(config) as stack:
        client = stack.memory_client
        assert client is not None
        before = stack.run(client.stats())
        shown = evaluate(tiny_model_dir, stack.tasks(tasks), stack, reward_spec={"qa_em": 1.0}, max_tool_calls=0,
                         memory=True)
        plain = evaluate(tiny_model_dir, stack.tasks(tasks), stack, reward_spec={"qa_em": 1.0}, max_tool_calls=0)
        after = stack.run(client.stats())
    assert shown.n == 4 and shown.memory_hit_rate == 1.0 and shown.settings["memory"]["top_k"] == 3
    assert all(r.memory_ids for r in shown.results)
    assert plain.memory_hit_rate is None and not any(r.memory_ids for r in plain.results)
    assert after == before                                 # nothing recorded, no utility moved
    with open_stack(dataclasses.replace(config, memory=MemoryConfig())) as stack, \
            pytest.raises(ConfigError, match="the memory needs `memory: "):
        evaluate(tiny_model_dir, stack.tasks(tasks), stack, reward_spec={"qa_em": 1.0}, memory=True)


def test_rlyard_eval_with_memory(tiny_model_dir: Path, tmp_path: Path, memory_servers: Any) -> None:
    db = tmp_path / "memory.sqlite"
    _seed(memory_servers, db)
    server = memory_servers.start(db=db)
    raw = {"name": "eval", "model": {"path": str(tiny_model_dir)},
           "memory": {"enabled": True, "target": server.address, "task_type": "context:db_id", "token_budget": 400},
           "stages": [{"kind": "rl", "steps": 1, "tasks": {"path": "unused.jsonl"}, "reward": {"qa_em": 1.0},
                       "rollout": {"group_size": 2, "prompts_per_step": 1, "max_new_tokens_per_turn": 8,
                                   "max_total_tokens": 1000}, "algorithm": {"micro_batch_size": 2}}]}
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "report.json"
    command = [sys.executable, "-m", "rlyard_app.cli.main", "eval", "-c", str(config), "--spider-dev", "2",
               "--no-schema", "--max-tool-calls", "0", "--output", str(out)]
    result = subprocess.run([*command, "--memory"], capture_output=True, text=True, timeout=180,
                            env={**os.environ, "COLUMNS": "160"}, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "shown a memory" in result.stdout
    report = json.loads(out.read_text())
    assert report["memory_hit_rate"] == 1.0 and all(r["memory_ids"] for r in report["results"])
    raw["memory"] = {"enabled": False}
    config.write_text(yaml.safe_dump(raw))
    refused = subprocess.run([*command, "--memory"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert refused.returncode == 2 and "--memory prompts with the graph memory" in " ".join(refused.stderr.split())


def test_a_later_round_of_a_step_numbers_its_groups_on_and_keeps_its_memories(
    tiny_model_dir: Path, tasks: Path, tmp_path: Path, memory_servers: Any
) -> None:
    """Dynamic sampling's later rounds: the memories stay with the samples that read them when the
    round's groups are numbered after the earlier rounds'."""
    from trainer.policy import load_policy

    db = tmp_path / "memory.sqlite"
    _seed(memory_servers, db)
    server = memory_servers.start(db=db)
    config = _config(tiny_model_dir, tasks, "http://127.0.0.1:1/v1", steps=1, memory={"target": server.address})
    policy = load_policy(str(tiny_model_dir))
    with open_stack(config) as stack:
        rollouts = stack.stage(config.stages[0], stack.sampler(policy), policy.tokenizer)
        try:
            rolled = rollouts.rollout(rollouts.tasks(1), 1, round_index=1, first_group=2)
        finally:
            rollouts.close()
    assert [(t.group_id, t.sample_index) for t in rolled] == [(g, s) for g in (2, 3) for s in range(4)]
    assert [bool(t.memories) for t in rolled] == [True, True, False, False] * 2
    for t in rolled:
        assert t.record.metadata["group_id"] == str(t.group_id)
        assert t.record.metadata.get("memory_ids", "") == ",".join(m.meta_cognition.id for m in t.memories)
