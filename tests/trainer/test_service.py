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

    async def first_step() -> None:
        async for event in stub.StreamMetrics(trainer_pb2.StreamMetricsRequest(run_id="long"), timeout=120):
            if event.step >= 1:
                return

    await asyncio.wait_for(first_step(), 120)
    stopped = (await stub.StopRun(trainer_pb2.StopRunRequest(run_id="long", checkpoint=True), timeout=120)).run
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


async def test_bad_requests_get_status_codes(trainer: Any) -> None:
    stub, _ = trainer
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.StartRun(trainer_pb2.StartRunRequest(config_yaml="name: x\nstages: []\n"), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "list at least one stage" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetRun(trainer_pb2.GetRunRequest(run_id="nope"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
