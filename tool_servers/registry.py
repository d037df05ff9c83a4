"""The tool plug-in registry: one file per tool, registered by name.

A tool is a class with ``name``, ``description``, a pydantic ``Args`` model
(``ListTools`` publishes its JSON Schema) and ``async call(args, session)``.
It is built with the server's ``ToolContext``. The registry refuses a
duplicate name, and ``build_tools`` fails at start-up on an unknown one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar

from pydantic import BaseModel

from rlyard.plugins import add_plugin, check_known, import_modules
from tool_servers.result import ToolResult
from tool_servers.session import Session
from tool_servers.settings import ToolServerSettings

T = TypeVar("T")


@dataclass
class ToolContext:
    """What tools share on one server: settings and the pool for blocking work."""

    settings: ToolServerSettings
    pool: ThreadPoolExecutor
    shared: dict[str, Any] = field(default_factory=dict)   # per-server resources (e.g. db pools)

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking work (sqlite, image decoding) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)


class Tool(Protocol):
    """The interface of a tool plug-in."""

    name: ClassVar[str]
    description: ClassVar[str]
    Args: ClassVar[type[BaseModel]]

    def __init__(self, ctx: ToolContext) -> None: ...

    def validate_context(self, context: Mapping[str, str]) -> None:
        """Raise a ``ServiceError`` if a session's context cannot serve this tool."""

    async def call(self, args: Any, session: Session) -> ToolResult: ...


REGISTRY: dict[str, type[Tool]] = {}
_TOOL_PACKAGE = "tool_servers.tools"


def register(cls: type[T]) -> type[T]:
    """Class decorator: add a tool to the registry under its ``name``."""
    add_plugin(REGISTRY, "tool", cls)
    return cls


def load_plugins() -> None:
    """Import every module of ``tool_servers.tools`` so that they register."""
    import_modules(_TOOL_PACKAGE)


def build_tools(names: tuple[str, ...] | list[str], ctx: ToolContext) -> dict[str, Tool]:
    """Instantiate the named tools; an unknown name is a start-up error."""
    load_plugins()
    check_known(REGISTRY, "tool", names)
    return {name: REGISTRY[name](ctx) for name in names}
