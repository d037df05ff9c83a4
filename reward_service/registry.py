"""The reward plug-in registry: one file per reward in ``reward_service/rewards/``, imported only
when served (``reward_service.catalog``).

A reward is a class with ``name``, ``description``, ``kind``, a pydantic ``Params`` model
(``ListRewards`` publishes its JSON Schema; a spec's ``params`` are validated against it) and
``async score(item, params)``. It is built once per service with the shared ``RewardContext``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar

from pydantic import BaseModel

from reward_service.catalog import REWARD_EXTRAS, REWARD_MODULES
from reward_service.settings import RewardSettings
from reward_service.types import RewardKindName, RewardOutcome
from rlyard.client import ToolClient
from rlyard.domain import ScoringItem
from rlyard.plugins import add_plugin, load_plugin

T = TypeVar("T")


@dataclass
class RewardContext:
    """What rewards share: settings, clients of other services, caches."""

    settings: RewardSettings
    shared: dict[str, Any] = field(default_factory=dict)
    _tool_clients: dict[str, ToolClient] = field(default_factory=dict)
    _pool: ThreadPoolExecutor | None = None

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU-heavy work (sqlparse, row comparison) off the event loop, so that one slow item
        does not hold up every other request; at most ``worker_threads`` run at once."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.settings.worker_threads, thread_name_prefix="reward")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def tool_client(self, target: str | None = None) -> ToolClient:
        """One client per tool-server target (default: the SQL tool server)."""
        target = target or self.settings.sql_tools_target
        client = self._tool_clients.get(target)
        if client is None:
            client = ToolClient(
                target, timeout=self.settings.tool_timeout_s, auth_token=self.settings.sql_tools_auth_token
            )
            self._tool_clients[target] = client
        return client

    async def close(self) -> None:
        """Close clients, anything in ``shared`` that has ``aclose``/``close``, and the worker threads."""
        for client in self._tool_clients.values():
            await client.close()
        self._tool_clients.clear()
        for resource in self.shared.values():
            closer = getattr(resource, "aclose", None) or getattr(resource, "close", None)
            if closer is not None:
                result = closer()
                if asyncio.iscoroutine(result):
                    await result
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


class Reward(Protocol):
    """The interface of a reward plug-in."""

    name: ClassVar[str]
    description: ClassVar[str]
    kind: ClassVar[RewardKindName]
    Params: ClassVar[type[BaseModel]]

    def __init__(self, ctx: RewardContext) -> None: ...

    async def score(self, item: ScoringItem, params: Any) -> RewardOutcome:
        """Score one item. Raise ``RewardSystemError`` when the system failed and
        ``RewardInputError`` when the item lacks what this reward needs."""
        ...


REGISTRY: dict[str, type[Reward]] = {}


def register(cls: type[T]) -> type[T]:
    """Class decorator: add a reward to the registry under its ``name``."""
    add_plugin(REGISTRY, "reward", cls)
    return cls


def load_reward(name: str) -> type[Reward]:
    """The class of reward ``name`` (registered already, else imported from the catalog)."""
    cls: type[Reward] = load_plugin(REGISTRY, "reward", name, REWARD_MODULES, REWARD_EXTRAS)
    return cls


def build_rewards(ctx: RewardContext, names: list[str] | tuple[str, ...] | None = None) -> dict[str, Reward]:
    """Instantiate the named rewards (default: every reward of the catalog), importing only their
    modules; an unknown name is a ConfigError."""
    names = list(REWARD_MODULES) if names is None else list(names)
    classes = {name: load_reward(name) for name in names}
    return {name: cls(ctx) for name, cls in classes.items()}
