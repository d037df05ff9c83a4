"""The trainer as a gRPC service: StartRun, GetRun, StreamMetrics, StopRun with the real
runner on the tiny policy (SFT stages, so runs are quick and deterministic)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
import yaml

from rlyard.client import make_channel
from rlyard.server import RunningServer, start_server
from rlyard.settings import ServerSettings
from rlyard.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from trainer.service import trainer_service


def _config(model_dir: Path, data: Path, steps: int) -> str:
    return yaml.safe_dump({
        "name": "svc", "seed": 1, "model": {"path": str(model_dir)},
        "checkpoint": {"every_steps": 1, "keep": 2},
        "stages": [{"kind": "sft", "name": "warm", "data": str(data), "steps": steps, "batch_size": 2,
                    "optim": {"lr": 1e-3}}],
    })


@pytest.fixture
def sft_jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q {i}"},
                                                     {"role": "assistant", "content": f"<answer>{i}</answer>"}]})
                            + "\n" for i in range(6)))
    return path


@pytest.fixture
async def trainer(tmp_path: Path) -> AsyncIterator[tuple[trainer_pb2_grpc.TrainerServiceStub, RunningServer]]:
    running = await start_server(trainer_service(tmp_path / "runs"), ServerSettings())
    channel = make_channel(running.address)
    yield trainer_pb2_grpc.TrainerServiceStub(channel), running
    await channel.close()
    await running.stop(0)


async def _stream(stub: Any, run_id: str, from_step: int = 0) -> list[trainer_pb2.MetricEvent]:
    events = []
    async for event in stub.StreamMetrics(trainer_pb2.StreamMetricsRequest(run_id=run_id, from_step=from_step),
                                          timeout=120):
        events.append(event)
    return events


async def _first_step(stub: Any, run_id: str) -> None:
    """Returns once the run has reported its first step."""
    async for event in stub.StreamMetrics(trainer_pb2.StreamMetricsRequest(run_id=run_id), timeout=120):
        if event.step >= 1:
            return


async def test_run_to_completion_with_streamed_metrics(trainer: Any, tiny_model_dir: Path, sft_jsonl: Path) -> None:
    stub, _ = trainer
    started = await stub.StartRun(trainer_pb2.StartRunRequest(config_yaml=_config(tiny_model_dir, sft_jsonl, 3),
                                                              run_id="r1"), timeout=30)
    assert started.run.run_id == "r1" and started.run.total_steps == 3
    events = await asyncio.wait_for(_stream(stub, "r1"), 120)
    steps = [e.step for e in events if e.values]
    assert steps == [1, 2, 3]
    assert all("loss" in e.values for e in events if e.values)
    assert events[-1].state == trainer_pb2.RUN_STATE_SUCCEEDED
    run = (await stub.GetRun(trainer_pb2.GetRunRequest(run_id="r1"), timeout=10)).run
    assert run.state == trainer_pb2.RUN_STATE_SUCCEEDED and run.step == 3 and run.stage == "warm"
    assert "loss" in run.latest_metrics and run.last_checkpoint
    report = json.loads((Path(run.output_dir) / "report.json").read_text())
    assert report["state"] == "SUCCEEDED"
    late = await asyncio.wait_for(_stream(stub, "r1", from_step=3), 30)  # replay from a step
    assert [e.step for e in late if e.values] == [3]


async def test_stop_then_resume(trainer: Any, tiny_model_dir: Path, sft_jsonl: Path) -> None:
    stub, _ = trainer
    config = _config(tiny_model_dir, sft_jsonl, 400)
    await stub.StartRun(trainer_pb2.StartRunRequest(config_yaml=config, run_id="long"), timeout=30)
    await asyncio.wait_for(_first_step(stub, "long"), 120)
    stopped = (await stub.StopRun(trainer_pb2.StopRunRequest(run_id="long"), timeout=120)).run  # unset: checkpoint
    assert stopped.state == trainer_pb2.RUN_STATE_STOPPED
    assert 1 <= stopped.step < 400 and stopped.last_checkpoint
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.StopRun(trainer_pb2.StopRunRequest(run_id="long"), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    short = _config(tiny_model_dir, sft_jsonl, stopped.step + 2)
    await stub.StartRun(trainer_pb2.StartRunRequest(config_yaml=short, run_id="long", resume=True), timeout=30)
    events = await asyncio.wait_for(_stream(stub, "long"), 120)
    assert [e.step for e in events if e.values] == [stopped.step + 1, stopped.step + 2]
    assert events[-1].state == trainer_pb2.RUN_STATE_SUCCEEDED


@pytest.mark.parametrize("checkpoint", [True, False])
async def test_stop_run_honours_its_checkpoint_flag(trainer: Any, tiny_model_dir: Path, sft_jsonl: Path,
                                                    checkpoint: bool) -> None:
    stub, _ = trainer
    config = yaml.safe_load(_config(tiny_model_dir, sft_jsonl, 400))
    config["checkpoint"]["every_steps"] = 10_000        # no periodic checkpoint: only the stop can write one
    await stub.StartRun(trainer_pb2.StartRunRequest(config_yaml=yaml.safe_dump(config), run_id="s"), timeout=30)
    await asyncio.wait_for(_first_step(stub, "s"), 120)
    stopped = (await stub.StopRun(trainer_pb2.StopRunRequest(run_id="s", checkpoint=checkpoint), timeout=120)).run
    assert stopped.state == trainer_pb2.RUN_STATE_STOPPED
    written = sorted(p.name for p in (Path(stopped.output_dir) / "checkpoints").glob("step-*"))
    if checkpoint:
        assert stopped.last_checkpoint.endswith(f"step-{stopped.step:08d}")
        assert written == [Path(stopped.last_checkpoint).name]
    else:
        assert stopped.last_checkpoint == "" and written == []
    report = json.loads((Path(stopped.output_dir) / "report.json").read_text())
    assert report["state"] == "STOPPED" and report["last_checkpoint"] == (stopped.step if checkpoint else None)


async def test_an_sft_and_grpo_run_goes_end_to_end_through_the_service(
    trainer: Any, tiny_model_dir: Path, sft_jsonl: Path, tmp_path: Path, chat_server: Any
) -> None:
    """StartRun with an SFT + GRPO config: the service starts the SQL tools and the reward service
    embedded, streams both stages' metrics, writes checkpoints, and GRPO changes the parameters."""
    stub, _ = trainer
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"task_id": f"q{i}", "question": f"q {i}", "tools": [],
                                         "ground_truth": {"answers": [str(i)]}}) + "\n" for i in range(4)))
    # the untrained policy's samples differ only as a scripted judge grades them: every group has signal
    judge = chat_server(*(f"Score: {s}\nReason: scripted." for s in (0, 3, 6, 9) * 2))
    config = yaml.safe_load(_config(tiny_model_dir, sft_jsonl, 2))
    config["stages"].append({
        "kind": "rl", "name": "grpo", "steps": 2, "tasks": {"path": str(tasks)},
        "reward": {"qa_em": 1.0, "judge": {"weight": 0.1, "backend": "openai", "endpoint": judge.url, "model": "g",
                                           "require_reference": False}},
        "rollout": {"group_size": 2, "prompts_per_step": 2, "max_turns": 1, "max_new_tokens_per_turn": 12,
                    "max_total_tokens": 256},
        "algorithm": {"micro_batch_size": 2, "updates_per_batch": 1}, "optim": {"lr": 1e-3}})
    started = await stub.StartRun(trainer_pb2.StartRunRequest(config_yaml=yaml.safe_dump(config), run_id="rl"),
                                  timeout=30)
    assert started.run.total_steps == 4
    events = await asyncio.wait_for(_stream(stub, "rl"), 300)
    assert [(e.stage, e.step) for e in events if e.values] == [("warm", 1), ("warm", 2), ("grpo", 1), ("grpo", 2)]
    assert events[-1].state == trainer_pb2.RUN_STATE_SUCCEEDED
    grpo = [e.values for e in events if e.stage == "grpo"]
    assert all(v["updated"] == 1.0 and v["kept"] == 4 and v["trajectories"] == 4 for v in grpo)
    # the weights after SFT's 2 steps, then after GRPO's first update: synced to the sampler each time
    assert [v["sampled_weight_version"] for v in grpo] == [2.0, 3.0]
    assert len(judge.requests) == 8
    run = (await stub.GetRun(trainer_pb2.GetRunRequest(run_id="rl"), timeout=10)).run
    assert run.state == trainer_pb2.RUN_STATE_SUCCEEDED and run.stage == "grpo" and run.last_checkpoint
    out = Path(run.output_dir)
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*"))[-1] == "step-00000004"
    from safetensors.torch import load_file

    warm = load_file(out / "models" / "warm" / "model.safetensors")
    rl = load_file(out / "models" / "grpo" / "model.safetensors")
    assert any(not torch.equal(warm[k], rl[k]) for k in warm)
    assert "## grpo · step 1" in (out / "samples.md").read_text()


async def test_bad_requests_get_status_codes(trainer: Any, tmp_path: Path) -> None:
    stub, _ = trainer
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.StartRun(trainer_pb2.StartRunRequest(config_yaml="name: x\nstages: []\n"), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "list at least one stage" in (err.value.details() or "")
    rl = {"kind": "rl", "steps": 1, "reward": {"qa_em": 1.0}, "tasks": {"path": str(tmp_path / "none.jsonl")}}
    with pytest.raises(grpc.aio.AioRpcError) as err:      # checked before the run starts, not in its thread
        await stub.StartRun(trainer_pb2.StartRunRequest(config_yaml=yaml.safe_dump({"name": "x", "stages": [rl]})),
                            timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "none.jsonl does not exist" in str(
        err.value.details())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.StartRun(trainer_pb2.StartRunRequest(config_yaml=yaml.safe_dump(
            {"name": "x", "model": {"backend": "vllm"}, "stages": [rl]})), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "model.backend 'vllm'" in str(err.value.details())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetRun(trainer_pb2.GetRunRequest(run_id="nope"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
