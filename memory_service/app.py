"""Assembles the graph memory service: settings → store, encoder, index → servicer → runtime."""

from __future__ import annotations

import grpc

from memory_service.memory import GraphMemory
from memory_service.servicer import MemoryServicer
from memory_service.settings import MemorySettings
from rlyard.memory.v1 import memory_pb2, memory_pb2_grpc
from rlyard.server import Runtime, ServiceDefinition

SERVICE_NAME = memory_pb2.DESCRIPTOR.services_by_name["MemoryService"].full_name


def memory_service(settings: MemorySettings) -> ServiceDefinition:
    """The memory service as a ``ServiceDefinition``: it listens at once and turns SERVING once the
    store is open and migrated and MiniLM is loaded (a warm-up)."""
    memory = GraphMemory(settings)

    def register(server: grpc.aio.Server, runtime: Runtime) -> None:
        memory_pb2_grpc.add_MemoryServiceServicer_to_server(MemoryServicer(memory), server)

    return ServiceDefinition(name="memory", full_names=[SERVICE_NAME], register=register,
                             warm_up=[memory.open], on_stop=[memory.close])


def from_env() -> ServiceDefinition:
    """The memory service configured by ``RLYARD_MEMORY_*`` (what ``rlyard serve memory`` runs)."""
    return memory_service(MemorySettings.from_env("RLYARD_MEMORY"))
