"""``TrainerServicer``: translates ``rlyard.trainer.v1`` to the run registry and back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from rlyard.server import Runtime, ServiceDefinition
from rlyard.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from trainer.events import MetricsEvent, StateEvent
from trainer.runs import Run, RunRegistry

SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name


def run_pb(run: Run) -> trainer_pb2.RunInfo:
    """``RunInfo`` of a run."""
    return trainer_pb2.RunInfo(
        run_id=run.run_id,
        state=f"RUN_STATE_{run.state}",
        stage=run.stage,
        step=run.step,
        total_steps=run.total_steps,
        started_at=run.started_at,
        updated_at=run.updated_at,
        error=run.error,
        output_dir=str(run.run_dir),
        latest_metrics=run.latest_metrics,
        last_checkpoint=run.last_checkpoint,
    )


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    """The gRPC face of a ``RunRegistry``."""

    def __init__(self, registry: RunRegistry) -> None:
        self.registry = registry

    async def StartRun(self, request: trainer_pb2.StartRunRequest, context: object) -> trainer_pb2.StartRunResponse:
        run = self.registry.start(request.config_yaml, request.run_id, request.resume)
        return trainer_pb2.StartRunResponse(run=run_pb(run))

    async def GetRun(self, request: trainer_pb2.GetRunRequest, context: object) -> trainer_pb2.GetRunResponse:
        return trainer_pb2.GetRunResponse(run=run_pb(self.registry.get(request.run_id)))

    async def StreamMetrics(
        self, request: trainer_pb2.StreamMetricsRequest, context: object
    ) -> AsyncIterator[trainer_pb2.MetricEvent]:
        async for rec in self.registry.follow(request.run_id, request.from_step):
            event = rec.event
            metrics = event if isinstance(event, MetricsEvent) else None
            yield trainer_pb2.MetricEvent(
                run_id=request.run_id,
                stage=metrics.stage if metrics else "",
                step=metrics.step if metrics else event.step if isinstance(event, StateEvent) else 0,
                timestamp=rec.timestamp,
                values={k: float(v) for k, v in metrics.values.items()} if metrics else {},
                state=f"RUN_STATE_{rec.state}",  # type: ignore[arg-type]
            )

    async def StopRun(self, request: trainer_pb2.StopRunRequest, context: object) -> trainer_pb2.StopRunResponse:
        checkpoint = request.checkpoint if request.HasField("checkpoint") else True
        run = await asyncio.to_thread(self.registry.stop, request.run_id, checkpoint)
        return trainer_pb2.StopRunResponse(run=run_pb(run))


def trainer_service(runs_root: Path, registry: RunRegistry | None = None) -> ServiceDefinition:
    """The trainer as a ``ServiceDefinition`` for ``rlyard.server``."""
    reg = registry or RunRegistry(runs_root)

    def register(server: grpc.aio.Server, runtime: Runtime) -> None:
        trainer_pb2_grpc.add_TrainerServiceServicer_to_server(TrainerServicer(reg), server)

    async def stop() -> None:
        reg.stop_all()

    return ServiceDefinition(name="trainer", full_names=[SERVICE_NAME], register=register, on_stop=[stop])


def from_env() -> ServiceDefinition:
    """The trainer service configured by ``RLYARD_TRAINER_*`` (what ``rlyard serve trainer`` runs)."""
    from trainer.settings import TrainerSettings

    return trainer_service(TrainerSettings.from_env("RLYARD_TRAINER").runs_dir)
