"""The tools of a tool server run in this process, without gRPC: what environments use to write
demonstrations whose observations read exactly as a rollout's. Calls go through the same
``ToolExecutor`` as served ones (argument validation, model-facing error messages, context checks).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rlyard.domain import ToolResult
from tool_servers.app import build_executor
from tool_servers.registry import load_tool
from tool_servers.settings import ToolServerSettings


def tool_schemas(names: Sequence[str]) -> list[dict[str, Any]]:
    """OpenAI function-calling schemas of the named tools, as ``ListTools`` publishes them."""
    out = []
    for name in names:
        cls = load_tool(name)
        out.append({"type": "function", "function": {"name": cls.name, "description": cls.description,
                                                     "parameters": cls.Args.model_json_schema()}})
    return out


class LocalTools:
    """The named tools behind a ``ToolExecutor`` in this process; a context manager.

    ``families`` are settings of the tool families (e.g. ``SqlSettings(db_dir=...)``); the others
    come from the environment as on a server.
    """

    def __init__(self, tools: Sequence[str], families: Iterable[Any] = (), *, worker_threads: int = 1) -> None:
        settings = ToolServerSettings(tools=tuple(tools), worker_threads=worker_threads)
        self.executor, self.ctx = build_executor(settings, families)
        self._ids = 0

    def __enter__(self) -> LocalTools:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def call(self, name: str, arguments: Mapping[str, Any] | str,
                   context: Mapping[str, str] | None = None) -> ToolResult:
        """One call with the session context ``context`` (e.g. ``{"db_id": ...}``); a bad context
        raises the ``ServiceError`` a server would answer with."""
        self._ids += 1
        payload = arguments if isinstance(arguments, str) else json.dumps(dict(arguments))
        return await self.executor.call("", dict(context or {}), f"local{self._ids}", name, payload)

    def close(self) -> None:
        """Stop the worker threads and free shared resources."""
        self.ctx.close()
