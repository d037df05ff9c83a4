"""The tool server and the reward service, embedded in this process when no address is given:
what ``rlyard reward score``, ``rlyard train`` and ``rlyard eval`` start on their own, on loopback
ports the kernel picks.

The embedded tool server serves the default SQL tools, or the tools named in ``tool_names`` (the
local-life POI tools ``search``, ``poi_detail``, ``nearby``, ``retrieve`` read ``poi_dir`` and cache
their indexes in ``poi_index_dir``). A tool with a warm-up (``search`` loads or builds its BM25
index) leaves the server NOT_SERVING for a while: the services are yielded only once it is
SERVING. The embedded reward service reaches that tool server both as its SQL and as its POI
tool server (``sql_tools_target``, ``poi_tools_target``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reward_service.settings import RewardSettings
    from tool_servers.settings import ToolServerSettings

# Long enough to build the BM25 index of a full corpus on a small machine (~15 s) many times over;
# the dense index of ``retrieve`` takes longer: build it ahead with ``python -m tool_servers.poi``.
READY_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Services:
    """Where the tool server and the reward service are, and the settings of those started here."""

    tools: str
    reward: str
    tool_settings: ToolServerSettings | None = None     # None: the tool server was given
    reward_settings: RewardSettings | None = None       # None: the reward service was given


@contextlib.asynccontextmanager
async def embedded_services(
    db_dir: Path,
    *,
    tools: str = "",
    reward: str = "",
    tool_timeout_s: float = 30.0,
    tool_names: Sequence[str] = (),
    poi_dir: Path | None = None,
    poi_index_dir: Path | None = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> AsyncIterator[Services]:
    """Yields the tool server and reward service: the given addresses, or services started here
    and stopped on exit. ``tool_names`` (empty: the tool server's default SQL tools), ``poi_dir``
    and ``poi_index_dir`` (None: the settings' defaults) apply to an embedded tool server only.

    Raises:
        TimeoutError: the embedded tool server was not SERVING within ``ready_timeout_s``.
        rlyard.server.WarmUpError: one of its warm-ups failed.
    """
    from reward_service.app import reward_service
    from reward_service.settings import RewardSettings
    from rlyard.server import WarmUpError, start_server
    from rlyard.settings import ServerSettings
    from tool_servers.app import tool_service
    from tool_servers.settings import ToolServerSettings

    settings: ToolServerSettings | None = None
    reward_settings: RewardSettings | None = None
    async with contextlib.AsyncExitStack() as stack:
        if not tools:
            overrides: dict[str, Any] = {"db_dir": db_dir}
            if tool_names:
                overrides["tools"] = tuple(tool_names)
            if poi_dir is not None:
                overrides["poi_dir"] = poi_dir
            if poi_index_dir is not None:
                overrides["poi_index_dir"] = poi_index_dir
            settings = ToolServerSettings(**overrides)
            server = await start_server(tool_service(settings), ServerSettings())
            stack.push_async_callback(server.stop, 1.0)
            served = ", ".join(settings.tools)
            try:
                await server.wait_ready(ready_timeout_s)
            except TimeoutError:
                raise TimeoutError(
                    f"the embedded tool server ({served}) at {server.address} was not SERVING after "
                    f"{ready_timeout_s:.0f} s of warm-up; if it was building the POI indexes, build them "
                    f"ahead: `python -m tool_servers.poi --poi-dir {settings.poi_dir} "
                    f"--index-dir {settings.poi_index_dir}`"
                ) from None
            except WarmUpError as exc:
                raise WarmUpError(
                    f"the embedded tool server ({served}) did not start: {exc} "
                    f"(poi_dir={settings.poi_dir}, poi_index_dir={settings.poi_index_dir})"
                ) from exc
            tools = server.address
        if not reward:
            reward_settings = RewardSettings(
                sql_tools_target=tools, poi_tools_target=tools, tool_timeout_s=tool_timeout_s
            )
            server = await start_server(reward_service(reward_settings), ServerSettings())
            stack.push_async_callback(server.stop, 1.0)
            reward = server.address
        yield Services(tools, reward, settings, reward_settings)


@contextlib.asynccontextmanager
async def sql_services(
    db_dir: Path, *, tools: str = "", reward: str = "", tool_timeout_s: float = 30.0
) -> AsyncIterator[tuple[str, str]]:
    """``embedded_services`` with the default SQL tools."""
    async with embedded_services(db_dir, tools=tools, reward=reward, tool_timeout_s=tool_timeout_s) as services:
        yield services.tools, services.reward
