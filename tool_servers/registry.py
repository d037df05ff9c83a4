"""The tool plug-in registry: one file per tool, registered by name, imported only when served.

A tool is a class with ``name``, ``description``, a pydantic ``Args`` model (``ListTools``
publishes its JSON Schema) and ``async call(args, session)``. It is built with the server's
``ToolContext``, which also hands it its family's settings. The registry refuses a duplicate name,
and ``build_tools`` fails at start-up on an unknown one or on a family whose extra is missing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar

from pydantic import BaseModel

from rlyard.domain import ToolResult
from rlyard.plugins import add_plugin, load_plugin
from tool_servers import blocking
from tool_servers.catalog import FAMILY_EXTRAS, TOOL_MODULES
from tool_servers.session import Session
from tool_servers.settings import ToolServerSettings

T = TypeVar("T")
S = TypeVar("S")


@dataclass
class ToolContext:
    """What the tools of one server share: its settings, the pool for blocking work, their
    families' settings (given, or read from the environment on first use) and shared resources."""

    settings: ToolServerSettings
    pool: ThreadPoolExecutor
    families: dict[type, Any] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)   # per-server resources (e.g. db pools)

    @classmethod
    def create(cls, settings: ToolServerSettings, families: Iterable[Any] = ()) -> ToolContext:
        """A context with its own pool of ``settings.worker_threads`` threads."""
        pool = ThreadPoolExecutor(settings.worker_threads, thread_name_prefix="tool")
        return cls(settings, pool, {type(f): f for f in families})

    def family(self, cls: type[S]) -> S:
        """The settings of a tool family: the ones given, else ``cls.from_env(cls.ENV_PREFIX)``."""
        found = self.families.get(cls)
        if found is None:
            found = self.families[cls] = cls.from_env(cls.ENV_PREFIX)  # type: ignore[attr-defined]
        return found  # type: ignore[no-any-return]

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking work (sqlite, image decoding) off the event loop: on the pool, with the other
        calls of its stream's batch when it runs inside one (``tool_servers.blocking``)."""
        batch = blocking.current(self.pool)
        if batch is not None:
            return await batch.submit(fn, args)  # type: ignore[no-any-return]
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def close(self) -> None:
        """Stop the pool and dispose of shared resources that can be disposed of."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        for resource in self.shared.values():
            dispose = getattr(resource, "dispose", None)
            if dispose is not None:
                dispose()


class Tool(Protocol):
    """The interface of a tool plug-in."""

    name: ClassVar[str]
    description: ClassVar[str]
    Args: ClassVar[type[BaseModel]]

    def __init__(self, ctx: ToolContext) -> None: ...

    def validate_context(self, context: Mapping[str, str]) -> None:
        """Raise a ``ServiceError`` if a session's context cannot serve this tool."""

    # Optional: ``def validate_images(self, images: Sequence[ImagePart]) -> None`` raises a
    # ``ServiceError`` for a session's attachments this tool cannot read (the image tools check
    # each image's header: format, size, pixel limit), before the session opens.

    async def call(self, args: Any, session: Session) -> ToolResult: ...


REGISTRY: dict[str, type[Tool]] = {}


def register(cls: type[T]) -> type[T]:
    """Class decorator: add a tool to the registry under its ``name``."""
    add_plugin(REGISTRY, "tool", cls)
    return cls


def load_tool(name: str) -> type[Tool]:
    """The class of tool ``name`` (registered already, else imported from the catalog)."""
    cls: type[Tool] = load_plugin(REGISTRY, "tool", name, TOOL_MODULES, FAMILY_EXTRAS)
    return cls


def build_tools(names: Iterable[str], ctx: ToolContext) -> dict[str, Tool]:
    """Instantiate the named tools, importing only their modules; an unknown name is a start-up error."""
    names = list(names)
    classes = {name: load_tool(name) for name in names}
    return {name: cls(ctx) for name, cls in classes.items()}
