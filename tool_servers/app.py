"""Assembles the tool server: settings → tools → executor → servicer → runtime.

A tool may define ``async def warm_up(self) -> None`` (load an index, a model): the server
runs those in the background after it starts listening, in the order the tools are named,
and reports NOT_SERVING on health until they have all finished (``rlyard.server``). Calls are
not held back meanwhile: a tool with a warm-up should answer the calls that come before it is
ready with ``Unavailable`` rather than block (as ``retrieve`` does).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import grpc

from rlyard.interceptors import ConcurrencyLimiter
from rlyard.server import ServiceDefinition
from rlyard.tools.v1 import tools_pb2, tools_pb2_grpc
from tool_servers.executor import ToolExecutor
from tool_servers.registry import ToolContext, build_tools
from tool_servers.servicer import ToolServicer
from tool_servers.session import SessionStore
from tool_servers.settings import ToolServerSettings

SERVICE_NAME = tools_pb2.DESCRIPTOR.services_by_name["ToolService"].full_name


def _build(settings: ToolServerSettings) -> tuple[ToolExecutor, ToolContext]:
    pool = ThreadPoolExecutor(settings.worker_threads, thread_name_prefix="tool")
    ctx = ToolContext(settings, pool)
    tools = build_tools(settings.tools, ctx)
    sessions = SessionStore(settings.session_idle_s, settings.max_sessions)
    executor = ToolExecutor(tools, sessions)
    sessions.validate = executor.validate_context
    return executor, ctx


def build_executor(settings: ToolServerSettings) -> tuple[ToolExecutor, ThreadPoolExecutor]:
    """The tools named in ``settings`` behind an executor (fails on unknown names)."""
    executor, ctx = _build(settings)
    return executor, ctx.pool


def tool_service(settings: ToolServerSettings) -> ServiceDefinition:
    """The tool server as a ``ServiceDefinition`` for ``rlyard.server``."""
    executor, ctx = _build(settings)

    def register(server: grpc.aio.Server, limiter: ConcurrencyLimiter) -> None:
        tools_pb2_grpc.add_ToolServiceServicer_to_server(ToolServicer(executor, limiter), server)

    async def stop() -> None:
        await executor.sessions.stop()
        ctx.pool.shutdown(wait=False, cancel_futures=True)
        for resource in ctx.shared.values():
            dispose = getattr(resource, "dispose", None)
            if dispose is not None:
                dispose()

    return ServiceDefinition(
        name="tools",
        full_names=[SERVICE_NAME],
        register=register,
        on_start=[executor.sessions.start],
        on_stop=[stop],
        warm_up=warm_ups(executor),
    )


def warm_ups(executor: ToolExecutor) -> list[Callable[[], Awaitable[None]]]:
    """The ``warm_up`` coroutine functions of the executor's tools that define one, in tool order."""
    hooks: list[Callable[[], Awaitable[None]]] = []
    for tool in executor.tools.values():
        hook = getattr(tool, "warm_up", None)
        if hook is not None:
            hooks.append(hook)
    return hooks
