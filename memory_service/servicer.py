"""``MemoryServicer``: translates ``rlyard.memory.v1`` protobuf to ``GraphMemory`` and back."""

from __future__ import annotations

from memory_service.memory import GraphMemory
from rlyard.domain.convert import (
    meta_cognition_to_pb,
    path_to_pb,
    scored_to_pb,
    stats_to_pb,
    trajectory_from_pb,
    utility_update_from_pb,
)
from rlyard.errors import InvalidArgument
from rlyard.memory.v1 import memory_pb2, memory_pb2_grpc


class MemoryServicer(memory_pb2_grpc.MemoryServiceServicer):
    """The gRPC face of a ``GraphMemory``."""

    def __init__(self, memory: GraphMemory) -> None:
        self.memory = memory

    async def RecordTrajectory(self, request: memory_pb2.RecordTrajectoryRequest,
                               context: object) -> memory_pb2.RecordTrajectoryResponse:
        if not request.HasField("trajectory"):
            raise InvalidArgument("the request has no trajectory")
        path = await self.memory.record(trajectory_from_pb(request.trajectory), request.reward, request.task_type,
                                        request.task_text)
        return memory_pb2.RecordTrajectoryResponse(path=path_to_pb(path))

    async def Retrieve(self, request: memory_pb2.RetrieveRequest, context: object) -> memory_pb2.RetrieveResponse:
        items = await self.memory.retrieve(request.task_text, request.task_type, request.top_k)
        return memory_pb2.RetrieveResponse(items=[scored_to_pb(s) for s in items])

    async def UpdateUtility(self, request: memory_pb2.UpdateUtilityRequest,
                            context: object) -> memory_pb2.UpdateUtilityResponse:
        updates = [utility_update_from_pb(u, f"updates[{i}]") for i, u in enumerate(request.updates)]
        updated = await self.memory.update_utility(updates, request.learning_rate)
        return memory_pb2.UpdateUtilityResponse(updated=[meta_cognition_to_pb(m) for m in updated])

    async def Distill(self, request: memory_pb2.DistillRequest, context: object) -> memory_pb2.DistillResponse:
        created = await self.memory.distill(request.task_type, request.min_paths, request.max_new)
        return memory_pb2.DistillResponse(created=[meta_cognition_to_pb(m) for m in created])

    async def Stats(self, request: memory_pb2.StatsRequest, context: object) -> memory_pb2.StatsResponse:
        return stats_to_pb(await self.memory.stats())
