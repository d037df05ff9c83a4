"""Assembles the tool server: settings → tools (importing only their families) → executor →
servicer → runtime.

A tool may define ``async def warm_up(self) -> None`` (load an index, a model): the server
runs those in the background after it starts listening, in the order the tools are named,
and reports NOT_SERVING on health until they have all finished (``rlyard.server``). Calls are
not held back meanwhile: a tool with a warm-up should answer the calls that come before it is
ready with ``Unavailable`` rather than block (as ``retrieve`` does).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import grpc

from rlyard.errors import ConfigError
from rlyard.server import Runtime, ServiceDefinition
from rlyard.tools.v1 import tools_pb2, tools_pb2_grpc
from tool_servers.catalog import FAMILY_SETTINGS, TOOL_MODULES
from tool_servers.executor import ToolExecutor
from tool_servers.registry import REGISTRY, ToolContext, build_tools
from tool_servers.servicer import ToolServicer
from tool_servers.session import ContextLimits, SessionStore
from tool_servers.settings import ToolServerSettings

SERVICE_NAME = tools_pb2.DESCRIPTOR.services_by_name["ToolService"].full_name


def build_executor(settings: ToolServerSettings, families: Iterable[Any] = ()) -> tuple[ToolExecutor, ToolContext]:
    """The tools named in ``settings`` behind an executor (fails on unknown names). ``families``
    are settings objects of tool families (e.g. ``SqlSettings(db_dir=...)``) that replace what the
    environment would give."""
    ctx = ToolContext.create(settings, families)
    try:
        tools = build_tools(settings.tools, ctx)
    except BaseException:
        ctx.close()
        raise
    limits = ContextLimits(settings.session_max_context_keys, settings.session_max_context_key_chars,
                           settings.session_max_context_value_chars)
    sessions = SessionStore(settings.session_idle_s, settings.max_sessions,
                            max_images=settings.session_max_images,
                            max_image_bytes=settings.session_max_image_bytes,
                            max_idle_s=settings.session_max_idle_s, context_limits=limits)
    executor = ToolExecutor(tools, sessions)
    sessions.validate = executor.validate_context
    sessions.validate_images = executor.validate_images
    return executor, ctx


def tool_service(settings: ToolServerSettings, families: Iterable[Any] = ()) -> ServiceDefinition:
    """The tool server as a ``ServiceDefinition`` for ``rlyard.server``."""
    executor, ctx = build_executor(settings, families)

    def register(server: grpc.aio.Server, runtime: Runtime) -> None:
        tools_pb2_grpc.add_ToolServiceServicer_to_server(ToolServicer(executor, runtime, ctx), server)

    async def stop() -> None:
        await executor.sessions.stop()
        ctx.close()

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


def family_settings(name: str, values: Mapping[str, Any] | None = None,
                    environ: Mapping[str, str] | None = None) -> Any:
    """The settings of tool family ``name``: the environment's (``RLYARD_TOOLS_<FAMILY>_*``) with
    the fields in ``values`` replaced. Unknown families and fields are ConfigErrors that list the
    valid ones."""
    spec = FAMILY_SETTINGS.get(name)
    if spec is None:
        raise ConfigError(f"unknown tool family {name!r}; families: {', '.join(sorted(FAMILY_SETTINGS))}")
    module, _, cls_name = spec.partition(":")
    cls = getattr(importlib.import_module(module), cls_name)
    base = cls.from_env(cls.ENV_PREFIX, environ)
    return base.replaced(values or {}, f"tool family {name}") if values else base


def configure(tools: Sequence[str] = (), families: Mapping[str, Mapping[str, Any]] | None = None,
              environ: Mapping[str, str] | None = None) -> tuple[ToolServerSettings, list[Any]]:
    """A tool server's settings as a caller configures it (an embedded one): the environment's,
    with ``tools`` (if any) and the families' fields replaced. Checks the tool names against the
    catalog without importing any plug-in."""
    settings = ToolServerSettings.from_env("RLYARD_TOOLS", environ)
    if tools:
        settings = dataclasses.replace(settings, tools=tuple(tools))
    unknown = [t for t in settings.tools if t not in TOOL_MODULES and t not in REGISTRY]
    if unknown:
        raise ConfigError(f"unknown tool(s) {', '.join(unknown)}; available: {', '.join(sorted(TOOL_MODULES))}")
    return settings, [family_settings(name, values, environ) for name, values in (families or {}).items()]


def from_env() -> ServiceDefinition:
    """The tool server configured by ``RLYARD_TOOLS_*`` (what ``rlyard serve tools`` runs)."""
    return tool_service(ToolServerSettings.from_env("RLYARD_TOOLS"))
