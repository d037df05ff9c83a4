"""The reward plug-in registry: one file per reward in ``reward_service/rewards/``, imported only
when served (``reward_service.catalog``).

A reward is a class with ``name``, ``description``, ``kind``, a pydantic ``Params`` model
(``ListRewards`` publishes its JSON Schema; a spec's ``params`` are validated against it) and
``async score(item, params)``. It is built once per service with the shared ``RewardContext``.

Optional, read by the scorer: ``max_text_chars`` (the longest model output the reward reads;
``None``: no limit of its own), ``floor(params, item)`` (its lowest value: what an over-long
output scores; default 0), ``check_params(params)`` (raise ``ValueError`` for parameters the
service refuses, e.g. an address it is not allowed to dial) and ``inner_spec(params)`` (the spec a
composite scores, bound with the outer one).
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
from rlyard.domain import ScoringItem
from rlyard.plugins import add_plugin, load_plugin
from rlyard.routing import AnyToolClient, tool_client_for
from rlyard.tls import PLAINTEXT, ClientSettings

T = TypeVar("T")

# Rule rewards run inline below this many characters of input, in the worker threads from it on.
INLINE_CPU_CHARS = 20_000


@dataclass
class RewardContext:
    """What rewards share: settings, clients of other services (dialled with ``client``: TLS and
    per-target tokens, rlyard/tls.py), caches."""

    settings: RewardSettings
    client: ClientSettings = PLAINTEXT
    shared: dict[str, Any] = field(default_factory=dict)
    _tool_clients: dict[str, AnyToolClient] = field(default_factory=dict)
    _pool: ThreadPoolExecutor | None = None

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU-heavy work (sqlparse, row comparison) off the event loop, so that one slow item
        does not hold up every other request; at most ``worker_threads`` run at once."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.settings.worker_threads, thread_name_prefix="reward")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def run_cpu(self, size: int, fn: Callable[..., T], *args: Any) -> T:
        """A rule reward's work on ``size`` characters: inline when small (microseconds; a thread hop
        would cost more), in the worker threads from ``INLINE_CPU_CHARS`` on."""
        if size < INLINE_CPU_CHARS:
            return fn(*args)
        return await self.run_blocking(fn, *args)

    def tool_client(self, target: str | None = None) -> AnyToolClient:
        """One client per tool-server target (default: the SQL tool server); a routed target (several
        replicas, ``rlyard.routing``) gets a ``RoutedToolClient``."""
        target = target or self.settings.sql_tools_target
        client = self._tool_clients.get(target)
        if client is None:
            token = self.client.token_for(target)
            if target == self.settings.sql_tools_target and self.settings.sql_tools_auth_token:
                token = self.settings.sql_tools_auth_token    # the older, reward-specific setting wins
            client = tool_client_for(target, timeout=self.settings.tool_timeout_s, auth_token=token,
                                     tls=self.client.channel_tls())
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


def check_tool_server(target: str | None, settings: RewardSettings) -> None:
    """Refuse (ValueError) a ``tool_server`` param that is neither configured nor allowed: a caller
    must not make the service dial an address of its choosing."""
    if target is not None and target not in settings.tool_targets:
        raise ValueError(f"tool_server {target[:200]!r} is not a tool server this service may call; allowed: "
                         f"{', '.join(sorted(settings.tool_targets))} (RLYARD_REWARD_ALLOWED_TOOL_TARGETS adds more)")


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
