"""The tool server, the reward service and (with ``memory.enabled``) the memory service started in
this process when a run names no address: what ``rlyard train``, the trainer service, ``rlyard
eval`` and the demos start on their own, on loopback ports the kernel picks. The only module of the
trainer that imports the services, and only their public entry points (``tool_servers.app``,
``reward_service.app``, ``memory_service.app``, and the reward and memory settings).

The embedded tool server takes its settings from the environment (``RLYARD_TOOLS_*``) with what
``services.embedded`` names replaced; a tool with a warm-up (``search`` loads or builds its BM25
index) leaves it NOT_SERVING for a while, and the services are yielded only once it is SERVING.
The embedded reward service reads SQL and POI data through that tool server (or the given one),
and may call the tool servers and judges the run's reward specs name. The embedded memory service
takes ``RLYARD_MEMORY_*`` with what ``memory.embedded`` names replaced (e.g. ``db_url``), and is
yielded once SERVING (its store migrated, MiniLM loaded).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from rlyard.domain import RewardSpec
from rlyard.tls import PLAINTEXT, ClientSettings
from trainer.config import MemoryConfig, ServicesConfig


@dataclass(frozen=True)
class Services:
    """Where the tool server, the reward service and the memory service are, and the settings of
    those started here."""

    tools: str
    reward: str
    tool_settings: Any = None       # ToolServerSettings; None: the tool server was given
    families: tuple[Any, ...] = ()  # the tool families' settings of an embedded tool server
    reward_settings: Any = None     # RewardSettings; None: the reward service was given
    memory: str = ""                # "": the config's memory is off
    memory_settings: Any = None     # the memory service's settings; None: it was given (or is off)


def check(config: ServicesConfig, memory: MemoryConfig | None = None) -> None:
    """Build the embedded services' settings without starting anything (ConfigError when a tool,
    a family or a setting is unknown or out of range)."""
    if not config.tools:
        _tool_settings(config)
    if not config.reward:
        _reward_settings(config, "127.0.0.1:0")
    if memory is not None and memory.enabled and not memory.target:
        _memory_settings(memory)


def named_targets(specs: Iterable[Any]) -> dict[str, tuple[str, ...]]:
    """The tool servers, judge endpoints and judge models that reward specs name (in any term,
    composites included), as the reward service's ``allowed_*`` settings: the reward service a run
    embeds trusts the run's own config."""
    found: dict[str, set[str]] = {"tool_server": set(), "endpoint": set(), "model": set()}
    stack = [spec.to_jsonable() if isinstance(spec, RewardSpec) else spec for spec in specs]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, values in found.items():
                if isinstance(node.get(key), str):
                    values.add(node[key])
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)
    return {"allowed_tool_targets": tuple(sorted(found["tool_server"])),
            "allowed_judge_endpoints": tuple(sorted(found["endpoint"])),
            "allowed_judge_checkpoints": tuple(sorted(found["model"]))}


def _tool_settings(config: ServicesConfig) -> tuple[Any, list[Any]]:
    from tool_servers.app import configure

    embedded = config.embedded
    return configure(embedded.tools, embedded.families)


def _reward_settings(config: ServicesConfig, tools: str, specs: Iterable[Any] = ()) -> Any:
    from reward_service.settings import RewardSettings

    settings = RewardSettings.from_env("RLYARD_REWARD")
    settings = dataclasses.replace(settings, sql_tools_target=tools, poi_tools_target=tools,
                                   tool_timeout_s=config.timeout_s)
    if config.embedded.reward:
        settings = settings.replaced(config.embedded.reward, "services.embedded.reward")
    named = named_targets(specs)
    return settings.replaced({key: tuple(getattr(settings, key)) + values for key, values in named.items()},
                             "the run's reward specs")


def _memory_settings(memory: MemoryConfig) -> Any:
    from memory_service.settings import MemorySettings

    settings = MemorySettings.from_env("RLYARD_MEMORY")
    return settings.replaced(memory.embedded, "memory.embedded") if memory.embedded else settings


@contextlib.asynccontextmanager
async def embedded_services(config: ServicesConfig, specs: Iterable[Any] = (),
                            memory: MemoryConfig | None = None,
                            client: ClientSettings = PLAINTEXT) -> AsyncIterator[Services]:
    """Yields the tool server, the reward service and (with ``memory`` on) the memory service: the
    given addresses, or services started here (on the running event loop) and stopped on exit. An
    embedded reward service may call the tool servers and judges that ``specs`` (the run's reward
    specs) name; it dials a given tool server with ``client`` (TLS, tokens), an embedded one in
    plaintext (services started here listen on loopback without TLS or token).

    Raises:
        TimeoutError: the embedded tool server was not SERVING within ``embedded.ready_timeout_s``.
        rlyard.server.WarmUpError: one of its warm-ups failed.
        rlyard.errors.ConfigError: an unknown tool, family or setting.
    """
    from reward_service.app import reward_service
    from rlyard.server import WarmUpError, start_server
    from rlyard.settings import ServerSettings
    from tool_servers.app import tool_service

    tools, reward = config.tools, config.reward
    tool_settings: Any = None
    families: list[Any] = []
    reward_settings: Any = None
    ready_timeout_s = config.embedded.ready_timeout_s
    async with contextlib.AsyncExitStack() as stack:
        if not tools:
            tool_settings, families = _tool_settings(config)
            server = await start_server(tool_service(tool_settings, families), ServerSettings())
            stack.push_async_callback(server.stop, 1.0)
            served = ", ".join(tool_settings.tools)
            try:
                await server.wait_ready(ready_timeout_s)
            except TimeoutError:
                raise TimeoutError(
                    f"the embedded tool server ({served}) at {server.address} was not SERVING after "
                    f"{ready_timeout_s:.0f} s of warm-up; if it was building the POI indexes, build them ahead "
                    "with `python -m tool_servers.poi --poi-dir DIR` or raise services.embedded.ready_timeout_s"
                ) from None
            except WarmUpError as exc:
                raise WarmUpError(f"the embedded tool server ({served}) did not start: {exc}") from exc
            tools = server.address
        if not reward:
            reward_settings = _reward_settings(config, tools, specs)
            dial = client if config.tools else PLAINTEXT
            server = await start_server(reward_service(reward_settings, dial), ServerSettings())
            stack.push_async_callback(server.stop, 1.0)
            reward = server.address
        memory_address, memory_settings = "", None
        if memory is not None and memory.enabled:
            memory_address = memory.target
            if not memory_address:
                from memory_service.app import memory_service

                memory_settings = _memory_settings(memory)
                server = await start_server(memory_service(memory_settings), ServerSettings())
                stack.push_async_callback(server.stop, 1.0)
                try:      # SERVING once its store is open and migrated and MiniLM is loaded
                    await server.wait_ready(ready_timeout_s)
                except TimeoutError:
                    raise TimeoutError(f"the embedded memory service at {server.address} was not SERVING after "
                                       f"{ready_timeout_s:.0f} s (raise services.embedded.ready_timeout_s)") from None
                except WarmUpError as exc:
                    raise WarmUpError(f"the embedded memory service did not start: {exc}") from exc
                memory_address = server.address
        yield Services(tools, reward, tool_settings, tuple(families), reward_settings, memory_address, memory_settings)
