"""One way to start any rlyard service.

``start_server`` builds a ``grpc.aio`` server with the runtime interceptor
(auth, admission, error mapping, metrics), the standard health service,
server reflection, the configured message-size limits and, optionally, a
Prometheus endpoint. ``serve`` runs it until SIGTERM/SIGINT, then drains:
health goes NOT_SERVING first, in-flight calls get ``grace_s`` to finish, and
new calls are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from rlyard.interceptors import ConcurrencyLimiter, RuntimeInterceptor
from rlyard.metrics import MetricsEndpoint
from rlyard.settings import ServerSettings

logger = logging.getLogger(__name__)


@dataclass
class ServiceDefinition:
    """What a service contributes to the runtime.

    ``register`` adds the servicers to the server (it receives the shared
    concurrency limiter, which streaming servicers use per item);
    ``full_names`` are the proto service names for health and reflection;
    ``on_stop`` hooks run after the server has drained.
    """

    name: str
    full_names: list[str]
    register: Callable[[grpc.aio.Server, ConcurrencyLimiter], None]
    on_start: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


@dataclass
class RunningServer:
    """A started server: where it listens and how to stop it."""

    definition: ServiceDefinition
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    limiter: ConcurrencyLimiter
    metrics: MetricsEndpoint | None
    settings: ServerSettings

    @property
    def address(self) -> str:
        """host:port that clients dial."""
        return f"{self.settings.host}:{self.port}"

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING on health, then drain in-flight calls for ``grace`` seconds."""
        grace = self.settings.grace_s if grace is None else grace
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        for hook in self.definition.on_stop:
            await hook()
        if self.metrics is not None:
            self.metrics.close()


def grpc_options(settings: ServerSettings) -> list[tuple[str, int]]:
    """Channel/server options shared by servers and clients."""
    return [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]


async def start_server(definition: ServiceDefinition, settings: ServerSettings) -> RunningServer:
    """Build, bind and start a server for ``definition``; port 0 binds a free port."""
    limiter = ConcurrencyLimiter(definition.name, settings.max_concurrent_rpcs)
    server = grpc.aio.server(
        interceptors=[RuntimeInterceptor(definition.name, limiter, settings.auth_token)],
        options=grpc_options(settings),
    )
    definition.register(server, limiter)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*definition.full_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    if port == 0:
        raise OSError(f"could not bind {settings.host}:{settings.port}; is the port in use?")
    for hook in definition.on_start:
        await hook()
    await server.start()
    for name in ["", *definition.full_names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    endpoint = None
    if settings.metrics_port is not None:
        endpoint = MetricsEndpoint(settings.host, settings.metrics_port)
    running = RunningServer(definition, server, port, health_servicer, limiter, endpoint, settings)
    logger.info("%s serving on %s", definition.name, running.address)
    return running


def write_ready_file(path: Path, running: RunningServer) -> None:
    """Atomically write where the service listens (the launcher reads it)."""
    data = {
        "service": running.definition.name,
        "host": running.settings.host,
        "port": running.port,
        "metrics_port": running.metrics.port if running.metrics else None,
        "pid": os.getpid(),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


async def serve(definition: ServiceDefinition, settings: ServerSettings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    running = await start_server(definition, settings)
    if settings.ready_file is not None:
        write_ready_file(settings.ready_file, running)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logger.info("%s: shutting down (grace %.1fs)", definition.name, settings.grace_s)
    await running.stop()
    logger.info("%s: stopped", definition.name)
