"""One way to start any rlyard service.

``start_server`` builds a ``grpc.aio`` server with the runtime interceptor
(auth, admission, error mapping, metrics), the standard health service,
server reflection, the configured message-size limits, a TLS port when the
settings give a certificate (``RLYARD_TLS_*``, rlyard/tls.py) and, optionally, a
Prometheus endpoint. ``serve`` runs it until SIGTERM/SIGINT, then drains:
health goes NOT_SERVING first, in-flight calls get ``grace_s`` to finish, and
new calls are refused.

Warm-up: a service whose definition lists ``warm_up`` coroutines (loading an
index, a model) starts listening at once with health NOT_SERVING for its
names; the coroutines run one after another in the background, and health
turns SERVING when the last has finished. If one fails, the error is logged
with its traceback and health stays NOT_SERVING; ``serve`` then stops the
server and raises ``WarmUpError`` (the process exits non-zero with the
message, so a launcher or orchestrator sees why), and
``RunningServer.wait_ready`` raises it to in-process callers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from rlyard.interceptors import ConcurrencyLimiter, RuntimeInterceptor
from rlyard.metrics import MetricsEndpoint
from rlyard.settings import ServerSettings
from rlyard.tls import server_credentials

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    """What the runtime gives a service's servicers: the shared concurrency limiter (streaming
    servicers admit each item they carry) and the server's settings (e.g. its message limit)."""

    limiter: ConcurrencyLimiter
    settings: ServerSettings


@dataclass
class ServiceDefinition:
    """What a service contributes to the runtime.

    ``register`` adds the servicers to the server (it receives the ``Runtime``);
    ``full_names`` are the proto service names for health and reflection;
    ``on_start`` hooks run before the server listens; ``warm_up`` coroutines
    run in order after it listens, while health says NOT_SERVING (see the
    module docstring); ``on_stop`` hooks run after the server has drained.
    """

    name: str
    full_names: list[str]
    register: Callable[[grpc.aio.Server, Runtime], None]
    on_start: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    warm_up: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


class WarmUpError(RuntimeError):
    """A warm-up of a service failed: the service never became ready."""


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
    warm_task: asyncio.Task[None] | None = None   # the warm-ups, while they run (None: none)

    @property
    def address(self) -> str:
        """host:port that clients dial."""
        return f"{self.settings.host}:{self.port}"

    @property
    def ready(self) -> bool:
        """Every warm-up has finished successfully (health says SERVING)."""
        task = self.warm_task
        return task is None or (task.done() and not task.cancelled() and task.exception() is None)

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until every warm-up has finished.

        Raises:
            WarmUpError: a warm-up failed (health stays NOT_SERVING).
            TimeoutError: not ready within ``timeout`` seconds (the warm-ups go on).
        """
        if self.warm_task is not None:
            await asyncio.wait_for(asyncio.shield(self.warm_task), timeout)

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING on health, then drain in-flight calls for ``grace`` seconds."""
        grace = self.settings.grace_s if grace is None else grace
        await self.health.enter_graceful_shutdown()
        if self.warm_task is not None and not self.warm_task.done():
            self.warm_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, WarmUpError):
                await self.warm_task
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
    credentials = None
    if settings.tls_cert is not None and settings.tls_key is not None:   # read first: a bad file fails here
        credentials = server_credentials(settings.tls_cert, settings.tls_key, settings.tls_client_ca,
                                         settings.tls_require_client_cert)
    limiter = ConcurrencyLimiter(definition.name, settings.max_concurrent_rpcs)
    server = grpc.aio.server(
        interceptors=[RuntimeInterceptor(definition.name, limiter, settings.auth_token)],
        options=grpc_options(settings),
    )
    definition.register(server, Runtime(limiter, settings))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*definition.full_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    address = f"{settings.host}:{settings.port}"
    port = (server.add_secure_port(address, credentials) if credentials is not None
            else server.add_insecure_port(address))
    if port == 0:
        raise OSError(f"could not bind {settings.host}:{settings.port}; is the port in use?")
    for hook in definition.on_start:
        await hook()
    await server.start()
    names = ["", *definition.full_names]
    first = health_pb2.HealthCheckResponse.NOT_SERVING if definition.warm_up else health_pb2.HealthCheckResponse.SERVING
    for name in names:
        await health_servicer.set(name, first)
    endpoint = None
    if settings.metrics_port is not None:
        endpoint = MetricsEndpoint(settings.host, settings.metrics_port)
    running = RunningServer(definition, server, port, health_servicer, limiter, endpoint, settings)
    if definition.warm_up:
        running.warm_task = asyncio.create_task(_warm_up(definition, health_servicer, names),
                                                name=f"{definition.name}-warm-up")
        # Mark the outcome as retrieved: a failure is logged by _warm_up, and raised by wait_ready/serve.
        running.warm_task.add_done_callback(lambda t: t.cancelled() or t.exception())
        logger.info("%s listening on %s%s; NOT_SERVING until %d warm-up(s) finish",
                    definition.name, running.address, _security(settings), len(definition.warm_up))
    else:
        logger.info("%s serving on %s%s", definition.name, running.address, _security(settings))
    return running


def _security(settings: ServerSettings) -> str:
    """How the port is protected, for the start-up log line."""
    tls = ("mutual TLS" if settings.tls_require_client_cert else "TLS") if settings.tls else "plaintext"
    return f" ({tls}, {'token required' if settings.auth_token else 'no token'})"


async def _warm_up(definition: ServiceDefinition, health_servicer: health.aio.HealthServicer,
                   names: list[str]) -> None:
    """Run the warm-ups in order, then turn health SERVING; a failure leaves it NOT_SERVING."""
    tic = time.perf_counter()
    for hook in definition.warm_up:
        try:
            await hook()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("%s: warm-up %s failed; health stays NOT_SERVING",
                             definition.name, getattr(hook, "__qualname__", hook))
            raise WarmUpError(f"{definition.name}: warm-up failed: {exc}") from exc
    for name in names:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    logger.info("%s ready (SERVING) after %.1fs of warm-up", definition.name, time.perf_counter() - tic)


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
    stopping = asyncio.create_task(stop.wait())
    pending: set[asyncio.Future[Any]] = {stopping}
    if running.warm_task is not None:
        pending.add(running.warm_task)
    failed: BaseException | None = None
    while not stopping.done():
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if running.warm_task in done and not running.warm_task.cancelled():
            failed = running.warm_task.exception()
            if failed is not None:
                stopping.cancel()
                break
    if failed is not None:
        logger.error("%s: not ready, shutting down: %s", definition.name, failed)
    else:
        logger.info("%s: shutting down (grace %.1fs)", definition.name, settings.grace_s)
    await running.stop()
    logger.info("%s: stopped", definition.name)
    if failed is not None:
        raise failed


def configure_logging(level: str) -> None:
    """Log lines with time, level and logger name, once per process."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(build: Callable[[], ServiceDefinition]) -> None:
    """A service process: server settings from ``RLYARD_*``, logging, then ``serve`` the service
    that ``build`` makes (from its own settings) until SIGTERM."""
    settings = ServerSettings.from_env("RLYARD")
    configure_logging(settings.log_level)
    asyncio.run(serve(build(), settings))
