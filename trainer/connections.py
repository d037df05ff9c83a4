"""Clients of the tool server and the reward service on the trainer's rollout event loop.

    with ServiceConnections(db_dir=..., tools="", reward="") as conn:   # "" = start it embedded
        conn.thread.run(...)      # coroutines that use conn.tool_client / conn.reward_client
        conn.tools                # ListTools as OpenAI function schemas

An embedded tool server serves the default SQL tools, or ``tool_names`` (e.g. the local-life
``search``, ``poi_detail``, ``nearby`` over the POI corpus in ``poi_dir``, indexes cached in
``poi_index_dir``, default ``<poi_dir>/index``); entering waits until it is SERVING (the BM25 index
is loaded or built), at most ``ready_timeout_s``. Everything async (servers, clients, streams)
lives on ``conn.thread``'s loop.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlyard.client import ToolClient
from rlyard.embedded import READY_TIMEOUT_S, Services, embedded_services
from rlyard.reward_client import RewardClient
from rlyard.services import ROOT
from trainer.rollout import EngineThread
from trainer.tasks import openai_tools

logger = logging.getLogger(__name__)
DEFAULT_DB_DIR = ROOT / "data" / "spider" / "database"
DEFAULT_POI_DIR = ROOT / "data" / "generated" / "poi"


class ServiceConnections:
    """The tool server and reward service of a run (embedded or remote) and their clients."""

    def __init__(self, *, db_dir: Path | str = DEFAULT_DB_DIR, tools: str = "", reward: str = "",
                 timeout_s: float = 30.0, tool_names: Sequence[str] = (), poi_dir: Path | str = "",
                 poi_index_dir: Path | str = "", ready_timeout_s: float = READY_TIMEOUT_S,
                 loop_name: str = "rollout-loop") -> None:
        self.db_dir = Path(db_dir)
        self.tools_target, self.reward_target = tools, reward
        self.timeout_s = timeout_s
        self.tool_names = tuple(tool_names)
        self.poi_dir = Path(poi_dir) if poi_dir else DEFAULT_POI_DIR
        self.poi_index_dir = Path(poi_index_dir) if poi_index_dir else self.poi_dir / "index"
        self.ready_timeout_s = ready_timeout_s
        self.loop_name = loop_name
        self.embedded: Services | None = None    # what was started here, once entered
        self.thread: EngineThread | None = None
        self.tool_client: ToolClient | None = None
        self.reward_client: RewardClient | None = None
        self.tools: list[dict[str, Any]] = []
        self._stack: contextlib.AsyncExitStack | None = None

    def __enter__(self) -> Any:
        self.thread = EngineThread(name=self.loop_name)
        try:
            self.thread.run(self._start(), timeout=self.ready_timeout_s + 120)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _start(self) -> None:
        self._stack = contextlib.AsyncExitStack()
        self.embedded = await self._stack.enter_async_context(
            embedded_services(self.db_dir, tools=self.tools_target, reward=self.reward_target,
                              tool_timeout_s=self.timeout_s, tool_names=self.tool_names, poi_dir=self.poi_dir,
                              poi_index_dir=self.poi_index_dir, ready_timeout_s=self.ready_timeout_s)
        )
        self.tools_target, self.reward_target = self.embedded.tools, self.embedded.reward
        self.tool_client = ToolClient(self.tools_target, timeout=self.timeout_s)
        self.reward_client = RewardClient(self.reward_target, timeout=max(self.timeout_s, 120.0))
        self.tools = openai_tools(await self.tool_client.list_tools())
        logger.info("services: tools at %s (%s), reward at %s", self.tools_target,
                    ", ".join(t["function"]["name"] for t in self.tools), self.reward_target)

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
