"""Clients of the tool server and the reward service on the trainer's rollout event loop.

    with ServiceConnections(db_dir=..., tools="", reward="") as conn:   # "" = start it embedded
        conn.thread.run(...)      # coroutines that use conn.tool_client / conn.reward_client
        conn.tools                # ListTools as OpenAI function schemas

Everything async (servers, clients, streams) lives on ``conn.thread``'s loop.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from rlyard.client import ToolClient
from rlyard.embedded import sql_services
from rlyard.reward_client import RewardClient
from rlyard.services import ROOT
from trainer.rollout import EngineThread
from trainer.tasks import openai_tools

logger = logging.getLogger(__name__)
DEFAULT_DB_DIR = ROOT / "data" / "spider" / "database"


class ServiceConnections:
    """The SQL tool server and reward service of a run (embedded or remote) and their clients."""

    def __init__(self, *, db_dir: Path | str = DEFAULT_DB_DIR, tools: str = "", reward: str = "",
                 timeout_s: float = 30.0, loop_name: str = "rollout-loop") -> None:
        self.db_dir = Path(db_dir)
        self.tools_target, self.reward_target = tools, reward
        self.timeout_s = timeout_s
        self.loop_name = loop_name
        self.thread: EngineThread | None = None
        self.tool_client: ToolClient | None = None
        self.reward_client: RewardClient | None = None
        self.tools: list[dict[str, Any]] = []
        self._stack: contextlib.AsyncExitStack | None = None

    def __enter__(self) -> Any:
        self.thread = EngineThread(name=self.loop_name)
        try:
            self.thread.run(self._start(), timeout=120)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _start(self) -> None:
        self._stack = contextlib.AsyncExitStack()
        self.tools_target, self.reward_target = await self._stack.enter_async_context(
            sql_services(self.db_dir, tools=self.tools_target, reward=self.reward_target,
                         tool_timeout_s=self.timeout_s)
        )
        self.tool_client = ToolClient(self.tools_target, timeout=self.timeout_s)
        self.reward_client = RewardClient(self.reward_target, timeout=max(self.timeout_s, 120.0))
        self.tools = openai_tools(await self.tool_client.list_tools())
        logger.info("services: tools at %s, reward at %s", self.tools_target, self.reward_target)

    async def _stop(self) -> None:
        for client in (self.tool_client, self.reward_client):
            if client is not None:
                await client.close()
        if self._stack is not None:
            await self._stack.aclose()

    def close(self) -> None:
        """Close the clients, stop embedded services and the event loop."""
        if self.thread is None:
            return
        try:
            self.thread.run(self._stop(), timeout=30)
        finally:
            self.thread.close()
            self.thread = None
