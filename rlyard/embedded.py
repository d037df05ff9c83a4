"""The SQL tool server and the reward service, embedded in this process when no address
is given: what ``rlyard reward score``, ``rlyard train`` and ``rlyard eval`` start on
their own, on loopback ports the kernel picks."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path


@contextlib.asynccontextmanager
async def sql_services(
    db_dir: Path, *, tools: str = "", reward: str = "", tool_timeout_s: float = 30.0
) -> AsyncIterator[tuple[str, str]]:
    """Yields (tool server, reward service) addresses: the given ones, or services started
    here (the reward service wired to the tool server) and stopped on exit."""
    from reward_service.app import reward_service
    from reward_service.settings import RewardSettings
    from rlyard.server import start_server
    from rlyard.settings import ServerSettings
    from tool_servers.app import tool_service
    from tool_servers.settings import ToolServerSettings

    async with contextlib.AsyncExitStack() as stack:
        if not tools:
            server = await start_server(tool_service(ToolServerSettings(db_dir=db_dir)), ServerSettings())
            stack.push_async_callback(server.stop, 1.0)
            tools = server.address
        if not reward:
            settings = RewardSettings(sql_tools_target=tools, tool_timeout_s=tool_timeout_s)
            server = await start_server(reward_service(settings), ServerSettings())
            stack.push_async_callback(server.stop, 1.0)
            reward = server.address
        yield tools, reward
