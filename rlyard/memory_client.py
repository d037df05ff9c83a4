"""Typed async client of ``rlyard.memory.v1.MemoryService``: domain records in and out
(deadlines and UNAVAILABLE retries as every rlyard client, see ``rlyard.client``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rlyard.client import _BaseClient
from rlyard.domain import DecisionPath, MemoryStats, MetaCognition, ScoredMetaCognition, Trajectory, UtilityUpdate
from rlyard.domain.convert import (
    meta_cognition_from_pb,
    path_from_pb,
    scored_from_pb,
    stats_from_pb,
    trajectory_to_pb,
    utility_update_to_pb,
)
from rlyard.memory.v1 import memory_pb2, memory_pb2_grpc


class MemoryClient(_BaseClient):
    """Client of the graph memory service."""

    def __init__(self, target: str, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self.stub = memory_pb2_grpc.MemoryServiceStub(self.channel)

    async def __aenter__(self) -> MemoryClient:
        return self

    async def record_trajectory(self, trajectory: Trajectory, reward: float, task_type: str = "",
                                task_text: str = "", timeout: float | None = None) -> DecisionPath:
        """Store a trajectory and its reward; the decision path it was abstracted into. Recording
        the same ``trajectory_id`` again returns the same path and counts nothing twice."""
        request = memory_pb2.RecordTrajectoryRequest(trajectory=trajectory_to_pb(trajectory), reward=reward,
                                                     task_type=task_type, task_text=task_text)
        return path_from_pb((await self._unary(self.stub.RecordTrajectory, request, timeout)).path)

    async def retrieve(self, task_text: str, task_type: str = "", top_k: int = 3,
                       timeout: float | None = None) -> list[ScoredMetaCognition]:
        """The ``top_k`` meta-cognitions for a task, best first by relevance × utility
        (``task_type`` "" searches every type)."""
        request = memory_pb2.RetrieveRequest(task_text=task_text, task_type=task_type, top_k=top_k)
        return [scored_from_pb(s) for s in (await self._unary(self.stub.Retrieve, request, timeout)).items]

    async def update_utility(self, updates: Sequence[UtilityUpdate], learning_rate: float = 0.0,
                             timeout: float | None = None) -> list[MetaCognition]:
        """Apply reward differences to the meta-cognitions used (``learning_rate`` 0: the server's
        default); the updated meta-cognitions, in request order."""
        request = memory_pb2.UpdateUtilityRequest(updates=[utility_update_to_pb(u) for u in updates],
                                                  learning_rate=learning_rate)
        resp = await self._unary(self.stub.UpdateUtility, request, timeout)
        return [meta_cognition_from_pb(m) for m in resp.updated]

    async def distill(self, task_type: str = "", min_paths: int = 0, max_new: int = 0,
                      timeout: float | None = None) -> list[MetaCognition]:
        """Turn frequent successful and failing paths into new meta-cognitions (0: the server's
        defaults); those created."""
        request = memory_pb2.DistillRequest(task_type=task_type, min_paths=min_paths, max_new=max_new)
        return [meta_cognition_from_pb(m) for m in (await self._unary(self.stub.Distill, request, timeout)).created]

    async def stats(self, timeout: float | None = None) -> MemoryStats:
        """The counts of each layer and the mean utility."""
        return stats_from_pb(await self._unary(self.stub.Stats, memory_pb2.StatsRequest(), timeout))
